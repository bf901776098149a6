// modsec-eval: run raw HTTP/1.x requests through ModSecurity v3 + OWASP CRS.
//
// Reference harness for Moat's WAF: same command line and output as our own
// `moat-waf` tool, so the two can be compared request by request (rule ids,
// anomaly score, verdict, latency).  This is bench tooling, not data-plane
// code: it allocates, uses exceptions-free std:: containers freely and
// prefers clarity over speed outside the timed section.
//
//   modsec-eval --rules DIR --setup FILE --paranoia N [--detection-only]
//               [--crs-test-mode] [--repeat K] [--explain] REQUEST_FILE...
//
// Configuration, loaded in this order:
//   1. a generated preamble (engine mode, body access and limits, PCRE limits,
//      the XML/JSON body-processor switch rules 200000/200001 from
//      ModSecurity's modsecurity.conf-recommended, SecUnicodeMapFile when
//      /work/shared/data/unicode.mapping exists, audit log off);
//   2. FILE (a crs-setup.conf);
//   3. SecAction 900000 setting tx.paranoia_level / tx.executing_paranoia_level;
//      with --crs-test-mode also 900110 (anomaly thresholds 5 in / 4 out) and
//      900005 (tx.combined_file_sizes=65535), engine forced to DetectionOnly,
//      as in the CRS project's regression setup;
//   4. DIR/*.conf in sorted order.
//
// Output: one JSON line per request file:
//   {"file": ..., "rules": [ids], "score": N, "verdict": "pass"|"block"|"detect",
//    "us": median, "us_p99": p99, "cpu_us": median}
// "us" is the time from processConnection to the end of processRequestBody
// (steady_clock), median / p99 (nearest rank) over --repeat runs; "cpu_us" is
// the median thread CPU time of the same span (robust on a shared machine).
// "verdict": block = ModSecurity returned a disruptive intervention;
// detect = no intervention but a disruptive rule (e.g. 949110) fired, which is
// what DetectionOnly produces; pass otherwise.
//
// Build: g++ -std=c++17 -O2 bench/waf/modsec_eval.cpp -lmodsecurity -o modsec-eval

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

// The ModSecurity headers are not self-contained (NULL, free): include them last.
#include <modsecurity/intervention.h>
#include <modsecurity/modsecurity.h>
#include <modsecurity/rule_message.h>
#include <modsecurity/rules_set.h>
#include <modsecurity/transaction.h>

namespace fs = std::filesystem;

namespace {

constexpr const char *kUnicodeMap = "/work/shared/data/unicode.mapping";

struct Options {
    std::string rules_dir;
    std::string setup_file;
    int paranoia = 1;
    bool detection_only = false;
    bool crs_test_mode = false;
    bool explain = false;
    int repeat = 1;
    std::vector<std::string> files;
};

// ----------------------------------------------------------------- request --

struct Request {
    std::string method;
    std::string uri;
    std::string version;  // "1.1", as ModSecurity's processURI wants it
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;
};

std::string trim(std::string_view s) {
    size_t b = 0, e = s.size();
    while (b < e && (s[b] == ' ' || s[b] == '\t')) ++b;
    while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t' || s[e - 1] == '\r')) --e;
    return std::string(s.substr(b, e - b));
}

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i) {
        if (std::tolower(static_cast<unsigned char>(a[i])) !=
            std::tolower(static_cast<unsigned char>(b[i])))
            return false;
    }
    return true;
}

// Next line ending in LF (CR stripped); pos advances past the LF.
bool next_line(const std::string &buf, size_t &pos, std::string &line) {
    if (pos >= buf.size()) return false;
    size_t lf = buf.find('\n', pos);
    size_t end = (lf == std::string::npos) ? buf.size() : lf;
    line.assign(buf, pos, end - pos);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    pos = (lf == std::string::npos) ? buf.size() : lf + 1;
    return true;
}

// Lenient chunked decoding: stops at the 0 chunk or at the end of the data.
std::string dechunk(const std::string &buf, size_t pos) {
    std::string out, line;
    while (next_line(buf, pos, line)) {
        size_t n = std::strtoul(line.c_str(), nullptr, 16);
        if (n == 0) break;
        n = std::min(n, buf.size() - pos);
        out.append(buf, pos, n);
        pos += n;
        std::string crlf;
        next_line(buf, pos, crlf);
    }
    return out;
}

// Lenient HTTP/1.x parser: request line, headers (obs-fold joined), body by
// Transfer-Encoding: chunked or Content-Length (truncated to what is there);
// no body when neither is present, as an HTTP server would read it.
Request parse_request(const std::string &buf) {
    Request r;
    size_t pos = 0;
    std::string line;
    next_line(buf, pos, line);
    size_t sp1 = line.find(' ');
    size_t sp2 = line.rfind(' ');
    if (sp1 == std::string::npos) {
        r.method = line;
    } else {
        r.method = line.substr(0, sp1);
        if (sp2 > sp1) {
            r.uri = line.substr(sp1 + 1, sp2 - sp1 - 1);
            r.version = line.substr(sp2 + 1);
        } else {
            r.uri = line.substr(sp1 + 1);
        }
    }
    std::string rest = trim(line);
    if (r.method.empty() && !rest.empty()) {  // "   GET / HTTP/1.1": keep going, leniently
        Request again = parse_request(rest + "\r\n");
        r.method = again.method;
        r.uri = again.uri;
        r.version = again.version;
    }
    if (r.version.rfind("HTTP/", 0) == 0) r.version = r.version.substr(5);
    if (r.version.empty()) r.version = "0.9";

    bool chunked = false;
    long long content_length = -1;
    while (next_line(buf, pos, line)) {
        if (line.empty()) break;
        if ((line[0] == ' ' || line[0] == '\t') && !r.headers.empty()) {
            r.headers.back().second += " " + trim(line);
            continue;
        }
        size_t colon = line.find(':');
        std::string name = colon == std::string::npos ? line : line.substr(0, colon);
        std::string value = colon == std::string::npos ? "" : trim(line.substr(colon + 1));
        if (iequals(name, "Transfer-Encoding") &&
            value.find("chunked") != std::string::npos)
            chunked = true;
        if (iequals(name, "Content-Length") && content_length < 0)
            content_length = std::strtoll(value.c_str(), nullptr, 10);
        r.headers.emplace_back(std::move(name), std::move(value));
    }
    if (chunked) {
        r.body = dechunk(buf, pos);
    } else if (content_length > 0 && pos < buf.size()) {
        size_t n = std::min<size_t>(static_cast<size_t>(content_length), buf.size() - pos);
        r.body.assign(buf, pos, n);
    }
    return r;
}

// ------------------------------------------------------------------ config --

std::string preamble(const Options &o) {
    std::ostringstream c;
    bool detect = o.detection_only || o.crs_test_mode;
    c << "SecRuleEngine " << (detect ? "DetectionOnly" : "On") << "\n"
      << "SecRequestBodyAccess On\n"
      << "SecRequestBodyLimit 13107200\n"
      << "SecRequestBodyNoFilesLimit 131072\n"
      << "SecPcreMatchLimit 1000\n"
      << "SecPcreMatchLimitRecursion 1000\n"
      << "SecAuditEngine Off\n"
      << "SecDebugLogLevel 0\n"
      // Body-processor switches, as in modsecurity.conf-recommended.
      << "SecRule REQUEST_HEADERS:Content-Type \"^(?:application(?:/soap\\+|/)|text/)xml\" "
         "\"id:200000,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=XML\"\n"
      << "SecRule REQUEST_HEADERS:Content-Type \"^application/json\" "
         "\"id:200001,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON\"\n";
    std::error_code ec;
    if (fs::exists(kUnicodeMap, ec)) c << "SecUnicodeMapFile " << kUnicodeMap << " 20127\n";
    return c.str();
}

std::string crs_overrides(const Options &o) {
    std::ostringstream c;
    c << "SecAction \"id:900000,phase:1,nolog,pass,t:none,"
      << "setvar:tx.paranoia_level=" << o.paranoia << ","
      << "setvar:tx.executing_paranoia_level=" << o.paranoia << "\"\n";
    if (o.crs_test_mode) {
        c << "SecAction \"id:900110,phase:1,nolog,pass,t:none,"
             "setvar:tx.inbound_anomaly_score_threshold=5,"
             "setvar:tx.outbound_anomaly_score_threshold=4\"\n"
          << "SecAction \"id:900005,phase:1,nolog,pass,t:none,"
             "setvar:tx.combined_file_sizes=65535\"\n";
    }
    return c.str();
}

bool load_text(modsecurity::RulesSet &rules, const std::string &text, const std::string &ref) {
    if (rules.load(text.c_str(), ref) < 0) {
        std::cerr << "modsec-eval: error in " << ref << ": " << rules.getParserError() << "\n";
        return false;
    }
    return true;
}

bool load_file(modsecurity::RulesSet &rules, const std::string &path) {
    if (rules.loadFromUri(path.c_str()) < 0) {
        std::cerr << "modsec-eval: error loading " << path << ": " << rules.getParserError()
                  << "\n";
        return false;
    }
    return true;
}

// -------------------------------------------------------------------- eval --

struct Match {
    int id;
    int severity;
    bool disruptive;
    std::string msg;
    std::string data;
};

struct Collector {
    std::vector<Match> matches;
};

void log_cb(void *data, const void *msg) {
    if (data == nullptr || msg == nullptr) return;
    auto *rm = static_cast<const modsecurity::RuleMessage *>(msg);
    static_cast<Collector *>(data)->matches.push_back(
        {rm->m_ruleId, rm->m_severity, rm->m_isDisruptive, rm->m_message, rm->m_data});
}

struct Result {
    std::set<int> ids;
    std::vector<Match> matches;
    long score = 0;
    std::set<int> intervention_ids;
    bool block = false;
    int status = 200;
    double us = 0;
    double cpu_us = 0;
};

// Severity numbers (0 emergency .. 7 debug) to CRS 3.3 anomaly points.
int severity_points(int sev) {
    switch (sev) {
        case 2: return 5;  // critical
        case 3: return 4;  // error
        case 4: return 3;  // warning
        case 5: return 2;  // notice
        default: return 0;
    }
}

long tx_number(modsecurity::Transaction &t, const char *name, bool *found) {
    std::unique_ptr<std::string> v = t.m_collections.m_tx_collection->resolveFirst(name);
    *found = v != nullptr && !v->empty();
    return *found ? std::strtol(v->c_str(), nullptr, 10) : 0;
}

void check_intervention(modsecurity::Transaction &t, Result &res) {
    modsecurity::ModSecurityIntervention it;
    modsecurity::intervention::clean(&it);
    if (t.intervention(&it) && it.disruptive) {
        res.block = true;
        res.status = it.status;
        // With SecRuleEngine On the disruptive rule (e.g. 949110) is reported
        // in the intervention's log line, not through the server log callback.
        for (const char *p = it.log; p != nullptr && (p = std::strstr(p, "[id \"")) != nullptr;) {
            p += 5;
            res.intervention_ids.insert(std::atoi(p));
        }
    }
    modsecurity::intervention::free(&it);
}

// CPU time of this thread: unlike the wall clock, not inflated when the
// machine is shared with other busy processes.
double thread_cpu_us() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

Result run_one(modsecurity::ModSecurity &ms, modsecurity::RulesSet &rules, const Request &r) {
    Result res;
    Collector col;
    auto t = std::make_unique<modsecurity::Transaction>(&ms, &rules, &col);

    const double c0 = thread_cpu_us();
    auto t0 = std::chrono::steady_clock::now();
    t->processConnection("127.0.0.1", 12345, "127.0.0.1", 80);
    t->processURI(r.uri.c_str(), r.method.c_str(), r.version.c_str());
    for (const auto &h : r.headers) {
        t->addRequestHeader(reinterpret_cast<const unsigned char *>(h.first.data()),
                            h.first.size(),
                            reinterpret_cast<const unsigned char *>(h.second.data()),
                            h.second.size());
    }
    t->processRequestHeaders();
    check_intervention(*t, res);
    if (!r.body.empty())
        t->appendRequestBody(reinterpret_cast<const unsigned char *>(r.body.data()),
                             r.body.size());
    t->processRequestBody();
    auto t1 = std::chrono::steady_clock::now();
    res.us = std::chrono::duration<double, std::micro>(t1 - t0).count();
    res.cpu_us = thread_cpu_us() - c0;
    check_intervention(*t, res);

    // As moat-waf reports it: the request's total, tx.anomaly_score (CRS
    // copies it to tx.inbound_anomaly_score only when 949110 fires).
    bool found = false, found2 = false;
    res.score = tx_number(*t, "anomaly_score", &found);
    const long inbound = tx_number(*t, "inbound_anomaly_score", &found2);
    if (found2 && inbound > res.score) res.score = inbound;
    found = found || found2;
    if (!found) {
        for (const auto &m : col.matches)
            if (m.id < 949000) res.score += severity_points(m.severity);
    }

    t->addResponseHeader("Content-Type", "text/html");
    t->addResponseHeader("Content-Length", "0");
    t->processResponseHeaders(200, "HTTP/1.1");
    t->processResponseBody();
    t->processLogging();
    t.reset();

    res.matches = std::move(col.matches);
    for (const auto &m : res.matches) res.ids.insert(m.id);
    res.ids.insert(res.intervention_ids.begin(), res.intervention_ids.end());
    return res;
}

std::string json_escape(std::string_view s) {
    std::string o;
    for (unsigned char c : s) {
        switch (c) {
            case '"': o += "\\\""; break;
            case '\\': o += "\\\\"; break;
            case '\n': o += "\\n"; break;
            case '\r': o += "\\r"; break;
            case '\t': o += "\\t"; break;
            default:
                if (c < 0x20) {
                    char b[8];
                    std::snprintf(b, sizeof b, "\\u%04x", c);
                    o += b;
                } else {
                    o += static_cast<char>(c);  // bytes >= 0x80 passed through
                }
        }
    }
    return o;
}

double percentile(std::vector<double> v, double p) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    if (p == 50) {
        size_t n = v.size();
        return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    }
    size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * v.size()));
    return v[std::min(v.size(), std::max<size_t>(rank, 1)) - 1];
}

void usage() {
    std::cerr << "usage: modsec-eval --rules DIR --setup FILE --paranoia N [--detection-only]\n"
                 "                   [--crs-test-mode] [--repeat K] [--explain] REQUEST_FILE...\n";
}

bool parse_args(int argc, char **argv, Options &o) {
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto need = [&](const char *what) -> const char * {
            if (i + 1 >= argc) {
                std::cerr << "modsec-eval: " << what << " needs a value\n";
                std::exit(2);
            }
            return argv[++i];
        };
        if (a == "--rules") o.rules_dir = need("--rules");
        else if (a == "--setup") o.setup_file = need("--setup");
        else if (a == "--paranoia") o.paranoia = std::atoi(need("--paranoia"));
        else if (a == "--repeat") o.repeat = std::max(1, std::atoi(need("--repeat")));
        else if (a == "--detection-only") o.detection_only = true;
        else if (a == "--crs-test-mode") o.crs_test_mode = true;
        else if (a == "--explain") o.explain = true;
        else if (a == "-h" || a == "--help") return false;
        else if (a.rfind("--", 0) == 0) {
            std::cerr << "modsec-eval: unknown option " << a << "\n";
            return false;
        } else o.files.push_back(a);
    }
    if (o.rules_dir.empty() || o.setup_file.empty() || o.files.empty()) return false;
    if (o.paranoia < 1 || o.paranoia > 4) {
        std::cerr << "modsec-eval: --paranoia must be 1..4\n";
        return false;
    }
    return true;
}

}  // namespace

int main(int argc, char **argv) {
    Options o;
    if (!parse_args(argc, argv, o)) {
        usage();
        return 2;
    }

    modsecurity::ModSecurity ms;
    ms.setConnectorInformation("moat modsec-eval");
    ms.setServerLogCb(log_cb, modsecurity::RuleMessageLogProperty);

    modsecurity::RulesSet rules;
    if (!load_text(rules, preamble(o), "<modsec-eval preamble>")) return 1;
    if (!load_file(rules, o.setup_file)) return 1;
    if (!load_text(rules, crs_overrides(o), "<modsec-eval crs overrides>")) return 1;
    std::vector<std::string> confs;
    std::error_code ec;
    for (const auto &e : fs::directory_iterator(o.rules_dir, ec))
        if (e.path().extension() == ".conf") confs.push_back(e.path().string());
    if (ec) {
        std::cerr << "modsec-eval: cannot read " << o.rules_dir << ": " << ec.message() << "\n";
        return 1;
    }
    std::sort(confs.begin(), confs.end());
    for (const auto &c : confs)
        if (!load_file(rules, c)) return 1;

    int rc = 0;
    for (const auto &file : o.files) {
        std::ifstream in(file, std::ios::binary);
        if (!in) {
            std::cerr << "modsec-eval: cannot open " << file << "\n";
            rc = 1;
            continue;
        }
        std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        Request req = parse_request(raw);

        Result first;
        std::vector<double> times, cpu_times;
        times.reserve(o.repeat);
        cpu_times.reserve(o.repeat);
        for (int k = 0; k < o.repeat; ++k) {
            Result r = run_one(ms, rules, req);
            times.push_back(r.us);
            cpu_times.push_back(r.cpu_us);
            if (k == 0) first = std::move(r);
        }

        bool would_block = false;
        for (const auto &m : first.matches) would_block |= m.disruptive;
        would_block |= first.ids.count(949110) || first.ids.count(959100);
        const char *verdict = first.block ? "block" : (would_block ? "detect" : "pass");

        std::ostringstream js;
        js << "{\"file\": \"" << json_escape(file) << "\", \"rules\": [";
        bool comma = false;
        for (int id : first.ids) {
            js << (comma ? ", " : "") << id;
            comma = true;
        }
        char us[128];
        std::snprintf(us, sizeof us, "%.1f, \"us_p99\": %.1f, \"cpu_us\": %.1f",
                      percentile(times, 50), percentile(times, 99), percentile(cpu_times, 50));
        js << "], \"score\": " << first.score << ", \"verdict\": \"" << verdict
           << "\", \"us\": " << us << "}";
        std::cout << js.str() << "\n";

        if (o.explain) {
            for (const auto &m : first.matches)
                std::cerr << file << ": " << m.id << " sev=" << m.severity << " " << m.msg
                          << " [" << m.data.substr(0, 200) << "]\n";
        }
    }
    return rc;
}
