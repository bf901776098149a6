// moatctl: command-line companion of moatd. Thin for now: the REST control
// API (issue "Control plane") will give it more verbs.
//
//   moatctl validate FILE   validate a config document (same as moatd --check)
//   moatctl reload PID      ask a running moatd to re-read its config (SIGHUP)
//   moatctl stats PID       ask a running moatd to print its counters (SIGUSR1)
#include <signal.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "moat/control/config.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: moatctl validate FILE | reload PID | stats PID\n");
    return 2;
  }
  std::string verb = argv[1];
  if (verb == "validate") {
    auto r = moat::control::loadConfigFile(argv[2]);
    for (const auto& e : r.errors) std::fprintf(stderr, "%s: %s\n", argv[2], e.toString().c_str());
    if (!r.errors.empty()) return 1;
    std::printf("%s: OK\n", argv[2]);
    return 0;
  }
  if (verb == "reload" || verb == "stats") {
    char* end = nullptr;
    long pid = std::strtol(argv[2], &end, 10);
    if (end == argv[2] || *end != 0 || pid <= 0) {
      std::fprintf(stderr, "moatctl: %s is not a process id\n", argv[2]);
      return 2;
    }
    if (kill(static_cast<pid_t>(pid), verb == "reload" ? SIGHUP : SIGUSR1) != 0) {
      std::fprintf(stderr, "moatctl: signal %ld: %s\n", pid, std::strerror(errno));
      return 1;
    }
    return 0;
  }
  std::fprintf(stderr, "moatctl: unknown verb %s\n", verb.c_str());
  return 2;
}
