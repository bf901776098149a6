#!/usr/bin/env python3
"""Score a WAF run over the CRS regression requests.

Inputs: the manifest.json written by tools/crs_requests.py and a JSON-lines
result file from bench/waf/modsec_eval.cpp or moat-waf (one object per request
with at least ``file`` = the .http path and ``rules`` = matched rule ids).

Judging, per enabled test (see /work/shared/crs-tests/README.md):

* log_contains ``id "NNN"``: passes when NNN is among the matched ids;
* no_log_contains ``id "NNN"``: passes when NNN is not among them;
* a test with only ``status`` / ``expect_error`` judges the HTTP server in
  front of the WAF, not the rules: reported as "not judged";
* a log regex that is not of the ``id "NNN"`` form is checked against
  synthetic log lines ``[id "NNN"]`` per matched id (none in CRS 3.3.4);
* a test whose request has no result line is a failure ("no result").

Usage::

    python3 tools/crs_score.py MANIFEST RESULTS.jsonl [--list-failures] [--json OUT]
"""

import argparse
import json
import os
import re
import sys

_ID_RE = re.compile(r'\s*id\s+"(\d+)"\s*')  # same form as crs_requests.py


def _log_lines(ids):
    return ['[id "%d"]' % i for i in sorted(ids)]


def judge(test, ids):
    """Return (verdict, reasons): verdict is 'pass', 'fail' or 'not judged'."""
    reasons = []
    judged = False
    lines = None
    if test['log_contains']:
        judged = True
        for rx in test['log_contains']:
            m = _ID_RE.fullmatch(rx)
            if m:  # the expect_ids of the manifest, one regex at a time
                if int(m.group(1)) not in ids:
                    reasons.append('missing id %s' % m.group(1))
            else:
                lines = lines or _log_lines(ids)
                if not any(re.search(rx, ln) for ln in lines):
                    reasons.append('no log line matches %r' % rx)
    if test['no_log_contains']:
        judged = True
        for rx in test['no_log_contains']:
            m = _ID_RE.fullmatch(rx)
            if m:  # the forbid_ids of the manifest
                if int(m.group(1)) in ids:
                    reasons.append('forbidden id %s present' % m.group(1))
            else:
                lines = lines or _log_lines(ids)
                if any(re.search(rx, ln) for ln in lines):
                    reasons.append('a log line matches forbidden %r' % rx)
    if not judged:
        return 'not judged', []
    return ('fail' if reasons else 'pass'), reasons


def load_results(path):
    results = {}
    with open(path, encoding='utf-8', errors='replace') as fd:
        for ln in fd:
            ln = ln.strip()
            if not ln.startswith('{'):
                continue
            obj = json.loads(ln)
            results[os.path.abspath(obj['file'])] = obj
            results.setdefault(os.path.basename(obj['file']), obj)
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description='Judge a WAF run over the CRS regression tests.')
    ap.add_argument('manifest')
    ap.add_argument('results')
    ap.add_argument('--list-failures', action='store_true')
    ap.add_argument('--list-not-judged', action='store_true')
    ap.add_argument('--json', help='write per-test verdicts here')
    args = ap.parse_args(argv)

    with open(args.manifest, encoding='utf-8') as fd:
        manifest = json.load(fd)
    tests = manifest['tests'] if isinstance(manifest, dict) else manifest
    results = load_results(args.results)

    counts = {'pass': 0, 'fail': 0, 'not judged': 0}
    rows = []
    for t in tests:
        if not t.get('enabled', True):
            continue
        res = results.get(os.path.abspath(t['file'])) or results.get(os.path.basename(t['file']))
        if res is None:
            verdict, reasons = ('fail', ['no result']) if (t['log_contains'] or t['no_log_contains']) \
                else ('not judged', [])
        else:
            verdict, reasons = judge(t, set(int(i) for i in res.get('rules', [])))
        counts[verdict] += 1
        rows.append({'name': t['name'], 'verdict': verdict, 'reasons': reasons,
                     'status': t.get('status'), 'expect_error': t.get('expect_error')})

    judged = counts['pass'] + counts['fail']
    pct = 100.0 * counts['pass'] / judged if judged else 0.0
    print('tests: %d  pass: %d  fail: %d  not judged: %d  pass rate (judged): %.1f%%'
          % (len(rows), counts['pass'], counts['fail'], counts['not judged'], pct))
    if args.list_failures:
        for r in rows:
            if r['verdict'] == 'fail':
                print('FAIL %s: %s' % (r['name'], '; '.join(r['reasons'])))
    if args.list_not_judged:
        for r in rows:
            if r['verdict'] == 'not judged':
                print('NOT JUDGED %s: status=%s expect_error=%s'
                      % (r['name'], r['status'], r['expect_error']))
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as fd:
            json.dump({'counts': counts, 'pass_pct': pct, 'tests': rows}, fd, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
