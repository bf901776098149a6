// AdminServer: the admin listener's HTTP handling, driven by the test's own
// poll loop (as moatd's main thread drives it) with a client thread.
#include "moat/control/admin_server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>

using moat::control::AdminRequest;
using moat::control::AdminResponse;
using moat::control::AdminServer;
using moat::control::AdminServerOptions;

namespace {

// Runs the server until the client function returns; returns what the
// client read back (everything until the server closed or 2 s of silence).
std::string roundTrip(AdminServer& server, const std::string& bytes, bool halfClose = false) {
  std::atomic<bool> done{false};
  std::string got;
  std::thread client([&] {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(server.port());
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
      ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (halfClose) ::shutdown(fd, SHUT_WR);
      timeval tv{2, 0};
      setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      char buf[4096];
      for (;;) {
        ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) break;
        got.append(buf, static_cast<size_t>(n));
      }
    }
    ::close(fd);
    done = true;
  });
  while (!done) {
    std::vector<pollfd> fds;
    size_t n = server.pollFds(fds);
    ::poll(fds.data(), fds.size(), 20);
    server.dispatch(fds, 0, n);
  }
  client.join();
  return got;
}

std::unique_ptr<AdminServer> echoServer(std::vector<AdminRequest>* seen, size_t maxBody = 1024) {
  AdminServerOptions o;
  o.port = 0;
  o.maxBody = maxBody;
  std::string err;
  auto s = AdminServer::open(
      o,
      [seen](const AdminRequest& r) {
        seen->push_back(r);
        AdminResponse resp;
        resp.body = "{\"path\":\"" + r.path + "\",\"len\":" + std::to_string(r.body.size()) + "}";
        return resp;
      },
      err);
  EXPECT_TRUE(s) << err;
  return s;
}

TEST(AdminServer, AnswersAndParsesHeadersQueryAndBody) {
  std::vector<AdminRequest> seen;
  auto s = echoServer(&seen);
  std::string out = roundTrip(*s,
                             "PUT /api/v1/x?y=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\n"
                             "Content-Length: 4\r\nConnection: close\r\n\r\nabcd");
  EXPECT_EQ(out.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << out;
  EXPECT_NE(out.find("{\"path\":\"/api/v1/x\",\"len\":4}"), std::string::npos) << out;
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].method, "PUT");
  EXPECT_EQ(seen[0].query, "y=1");
  EXPECT_EQ(seen[0].header("authorization"), "Bearer t");
  EXPECT_EQ(seen[0].body, "abcd");
}

TEST(AdminServer, PipelinedRequestsAreAnsweredInOrder) {
  std::vector<AdminRequest> seen;
  auto s = echoServer(&seen);
  std::string out = roundTrip(*s,
                             "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"
                             "GET /c HTTP/1.1\r\nConnection: close\r\n\r\n");
  ASSERT_EQ(seen.size(), 3u);
  size_t a = out.find("\"/a\""), b = out.find("\"/b\""), c = out.find("\"/c\"");
  EXPECT_TRUE(a < b && b < c && c != std::string::npos) << out;
}

TEST(AdminServer, RefusesWhatItDoesNotAccept) {
  std::vector<AdminRequest> seen;
  auto s = echoServer(&seen, 16);
  EXPECT_EQ(roundTrip(*s, "GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").rfind("HTTP/1.1 411", 0), 0u);
  EXPECT_EQ(roundTrip(*s, "POST /x HTTP/1.1\r\nContent-Length: 17\r\n\r\n").rfind("HTTP/1.1 413", 0), 0u);
  EXPECT_EQ(roundTrip(*s, "GET /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").rfind("HTTP/1.1 400", 0), 0u);
  EXPECT_EQ(roundTrip(*s, "GET  /x HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 400", 0), 0u);
  EXPECT_EQ(roundTrip(*s, "GET x HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 400", 0), 0u);
  EXPECT_EQ(roundTrip(*s, "GET /x HTTP/2.0\r\n\r\n").rfind("HTTP/1.1 400", 0), 0u);
  EXPECT_EQ(roundTrip(*s, "GET /x HTTP/1.1\r\nBad Name: v\r\n\r\n").rfind("HTTP/1.1 400", 0), 0u);
  EXPECT_EQ(roundTrip(*s, "GET /x HTTP/1.1\r\nX: " + std::string(20000, 'a') + "\r\n\r\n").rfind("HTTP/1.1 431", 0), 0u);
  EXPECT_TRUE(seen.empty()) << "a refused request reached the handler";
  EXPECT_EQ(s->badRequests(), 8u);
}

TEST(AdminServer, NonLoopbackWithoutTlsIsRefused) {
  AdminServerOptions o;
  o.address = "0.0.0.0";
  o.port = 0;
  std::string err;
  auto s = AdminServer::open(o, [](const AdminRequest&) { return AdminResponse{}; }, err);
  EXPECT_FALSE(s);
  EXPECT_NE(err.find("without TLS"), std::string::npos) << err;
  o.address = "127.0.0.1";
  o.clientCaFile = "/nonexistent";
  s = AdminServer::open(o, [](const AdminRequest&) { return AdminResponse{}; }, err);
  EXPECT_FALSE(s);
  EXPECT_NE(err.find("needs TLS"), std::string::npos) << err;
}

TEST(AdminServer, PercentDecodeAndSecretEquals) {
  std::string out;
  EXPECT_TRUE(moat::control::percentDecode("%5B%3A%3A1%5D%3A80", out));
  EXPECT_EQ(out, "[::1]:80");
  EXPECT_FALSE(moat::control::percentDecode("%zz", out));
  EXPECT_FALSE(moat::control::percentDecode("%0", out));
  EXPECT_FALSE(moat::control::percentDecode("a%00b", out));
  EXPECT_TRUE(moat::control::secretEquals("abcdef", "abcdef"));
  EXPECT_FALSE(moat::control::secretEquals("abcdef", "abcdeg"));
  EXPECT_FALSE(moat::control::secretEquals("abcdef", "abcde"));
  EXPECT_FALSE(moat::control::secretEquals("", ""));
}

}  // namespace

namespace {
TEST(AdminServer, HalfClosedClientStillGetsItsAnswer) {
  std::vector<AdminRequest> seen;
  auto s = echoServer(&seen);
  std::string out = roundTrip(*s, "GET /h HTTP/1.1\r\n\r\n", true);
  EXPECT_EQ(out.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << out;
}
}  // namespace
