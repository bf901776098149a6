// The REST control API's routes (docs/CONTROL_API.md, docs/openapi.json).
//
// Control thread only: handle() runs inside AdminServer::dispatch on moatd's
// main thread, so it reads and changes the Appliance without locks. Every
// change goes through Appliance::apply (validated, published, persisted as a
// new version); a rejected change answers 4xx and changes nothing.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "appliance.h"
#include "moat/control/admin_server.h"
#include <nlohmann/json.hpp>

namespace moat::app {

class AdminApi {
 public:
  // Builds the route table (every route captures only `this`).
  AdminApi(Appliance& app, std::string token);
  control::AdminResponse handle(const control::AdminRequest& req);

  // Every (method, path pattern) answered, for `moatd --list-routes` and the
  // test that holds docs/openapi.json to it.
  std::vector<std::pair<std::string, std::string>> routes() const;

  // Prometheus text exposition of every counter (also used by tests).
  std::string metrics();
  // The "l4" object of GET /status: engine, services, port and counters.
  nlohmann::json l4Status() const;

  uint64_t unauthorized() const { return unauthorized_; }

 private:
  struct Route {
    using Fn = std::function<control::AdminResponse(const control::AdminRequest&,
                                                    const std::map<std::string, std::string>&)>;
    std::string method;
    std::string path;                  // "/api/v1/pools/{pool}/backends"
    std::vector<std::string> pattern;  // its segments; "{name}" matches one
    Fn fn;
  };

  Appliance& app_;
  std::string token_;
  std::vector<Route> routes_;
  uint64_t unauthorized_ = 0;
  uint64_t apiErrors_ = 0;
};

// The OpenAPI document, embedded from docs/openapi.json at build time.
extern const char* const kOpenApiJson;

}  // namespace moat::app
