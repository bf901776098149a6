#include "moat/control/config.h"

namespace moat::control {

// Kept in sync with docs/config.md; config_test checks that it parses cleanly.
std::string_view defaultConfigJson() {
  static constexpr std::string_view kDefault = R"json({
  "workers": 0,
  "listeners": [
    { "name": "public", "address": "127.0.0.1", "port": 8080, "protocol": "http" }
  ],
  "pools": [
    {
      "name": "demo",
      "balance": "round_robin",
      "backends": [
        { "address": "127.0.0.1", "port": 8081, "weight": 1 },
        { "address": "127.0.0.1", "port": 8082, "weight": 1 }
      ]
    }
  ],
  "routes": [
    { "host": "*", "pathPrefix": "/", "pool": "demo" }
  ],
  "timeouts": { "connectMs": 2000, "requestHeaderMs": 10000, "idleMs": 60000,
                "upstreamResponseMs": 30000 },
  "limits": { "maxHeaderBytes": 32768, "maxRequestLine": 8192, "maxHeaders": 100 },
  "logging": { "level": "info", "accessLog": "-" },
  "rateLimit": {
    "enabled": true,
    "maxKeys": 1000000,
    "rules": [ { "name": "default", "limit": 2000, "periodS": 300, "key": "ip" } ]
  }
}
)json";
  return kDefault;
}

}  // namespace moat::control
