// The REST control API's routes (docs/CONTROL_API.md, docs/openapi.json).
//
// Control thread only: handle() runs inside AdminServer::dispatch on moatd's
// main thread, so it reads and changes the Appliance without locks. Every
// change goes through Appliance::apply (validated, published, persisted as a
// new version); a rejected change answers 4xx and changes nothing.
#pragma once

#include <string>

#include "appliance.h"
#include "moat/control/admin_server.h"

namespace moat::app {

class AdminApi {
 public:
  AdminApi(Appliance& app, std::string token) : app_(app), token_(std::move(token)) {}
  control::AdminResponse handle(const control::AdminRequest& req);

  // Prometheus text exposition of every counter (also used by tests).
  std::string metrics();

  uint64_t unauthorized() const { return unauthorized_; }

 private:
  Appliance& app_;
  std::string token_;
  uint64_t unauthorized_ = 0;
  uint64_t apiErrors_ = 0;
};

// The OpenAPI document, embedded from docs/openapi.json at build time.
extern const char* const kOpenApiJson;

}  // namespace moat::app
