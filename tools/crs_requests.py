#!/usr/bin/env python3
"""Build the exact request bytes of the OWASP CRS 3.3 regression tests.

The tests are legacy ftw YAML files laid out as ``<RULE-FILE>/<ruleid>.yaml``.
This module reproduces what the ftw 1.3.0 client sends for every stage, so the
bytes can be fed to a WAF harness (``moat-waf``, ``bench/waf/modsec_eval.cpp``)
without an HTTP server in between.

Request building (see the README next to the tests):

* ``raw_request``: the string with its backslash escapes decoded (ftw 1.3.0 does
  ``raw.encode('utf-8').decode('unicode_escape').encode('utf-8')``).
* ``encoded_request``: base64 of the exact bytes.
* otherwise ``METHOD URI VERSION`` verbatim, the headers in file order (no Host
  is added), an empty line and the body.  Unless ``stop_magic`` is true and only
  when ``data`` is not empty: ``Content-Type: application/x-www-form-urlencoded``
  is added when absent; for exactly that content type and a body without
  %-escapes the body is re-encoded as ``urlencode(parse_qsl(data))`` (when that
  list is not empty); ``Content-Length`` (character count) is added when absent.
  The body is encoded in the Content-Type's ``charset`` when Python knows it,
  else UTF-8.

Library use::

    from crs_requests import load_tests
    for t in load_tests('/path/to/crs-tests'):
        t['name'], t['raw'], t['expect_ids'], ...

CLI::

    python3 tools/crs_requests.py [--tests DIR] --out OUTDIR [--skip-ok]
"""

import argparse
import base64
import encodings.aliases
import json
import os
import re
import sys
import urllib.parse

import yaml

CRLF = '\r\n'
FORM = 'application/x-www-form-urlencoded'
_ID_RE = re.compile(r'^\s*id\s+"(\d+)"\s*$')
_CHARSET_RE = re.compile(r'\;\s{0,1}?charset\=(.*?)(?:$|\;|\s)')


def _regex_list(value):
    """log_contains / no_log_contains: a string (or, leniently, a list)."""
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


def _ids_from_regexes(regexes):
    """Rule ids from regexes of the form ``id "NNN"`` (others are ignored)."""
    ids = set()
    for rx in regexes:
        m = _ID_RE.match(rx)
        if m:
            ids.add(int(m.group(1)))
    return ids


def _body_encoding(content_type):
    m = _CHARSET_RE.search(content_type)
    if not m:
        return 'utf-8'
    choice = m.group(1).replace('-', '_').lower()
    known = set(encodings.aliases.aliases.keys()) | set(encodings.aliases.aliases.values())
    return choice if choice in known else 'utf-8'


def build_request(inp):
    """Return (raw bytes, kind, notes) for one stage ``input`` dict.

    kind is 'raw_request', 'encoded_request' or 'built'.
    """
    notes = []
    if inp.get('raw_request') is not None and inp.get('encoded_request') is not None:
        raise ValueError('both raw_request and encoded_request given')
    if inp.get('encoded_request') is not None:
        return base64.b64decode(inp['encoded_request']), 'encoded_request', notes
    if inp.get('raw_request') is not None:
        raw = str(inp['raw_request']).encode('utf-8').decode('unicode_escape')
        return raw.encode('utf-8'), 'raw_request', notes

    method = str(inp.get('method', 'GET'))
    uri = str(inp.get('uri', '/'))
    version = str(inp.get('version', 'HTTP/1.1'))
    headers = dict(inp.get('headers') or {})      # keeps file order
    stop_magic = inp.get('stop_magic', False) is True
    data = inp.get('data', '')
    if data is None:
        data = ''
    if isinstance(data, list):
        data = CRLF.join(str(d) for d in data)
    data = str(data)

    if data != '':
        if 'Content-Type' not in headers and not stop_magic:
            headers['Content-Type'] = FORM
        if (not stop_magic and headers.get('Content-Type') == FORM
                and urllib.parse.unquote(data) == data):
            pairs = urllib.parse.parse_qsl(data)
            if pairs:
                data = urllib.parse.urlencode(pairs)
        if 'Content-Length' not in headers and not stop_magic:
            headers['Content-Length'] = len(data)

    head = '%s %s %s%s' % (method, uri, version, CRLF)
    for name, value in headers.items():
        head += '%s: %s%s' % (name, value, CRLF)
    head += CRLF

    body = b''
    if data != '':
        enc = 'utf-8'
        if 'Content-Type' in headers and not stop_magic:
            enc = _body_encoding(str(headers['Content-Type']))
        try:
            body = data.encode(enc, 'strict')
        except (UnicodeError, LookupError) as err:
            # ftw would report a test error here; we send UTF-8 and say so.
            notes.append('body not encodable as %s (%s); sent as UTF-8' % (enc, err))
            body = data.encode('utf-8')
    return head.encode('utf-8') + body, 'built', notes


def load_tests(crs_tests_dir, include_disabled=True):
    """Load every test stage under ``crs_tests_dir``.

    Returns a list of dicts (see module docstring); disabled tests are included
    with ``enabled: False`` unless include_disabled is False.
    """
    tests = []
    for rule_file in sorted(os.listdir(crs_tests_dir)):
        rdir = os.path.join(crs_tests_dir, rule_file)
        if not os.path.isdir(rdir):
            continue
        for fname in sorted(os.listdir(rdir)):
            if not fname.endswith('.yaml'):
                continue
            path = os.path.join(rdir, fname)
            with open(path, encoding='utf-8') as fd:
                doc = yaml.safe_load(fd)
            meta = doc.get('meta') or {}
            file_enabled = meta.get('enabled', True) is not False
            stem = fname[:-len('.yaml')]
            rule_id = int(stem) if stem.isdigit() else None
            for tdict in doc.get('tests') or []:
                title = str(tdict['test_title'])
                enabled = file_enabled and tdict.get('enabled', True) is not False
                stages = tdict.get('stages') or []
                for idx, sdict in enumerate(stages):
                    stage = sdict['stage']
                    inp = stage.get('input') or {}
                    out = stage.get('output') or {}
                    raw, kind, notes = build_request(inp)
                    log_contains = _regex_list(out.get('log_contains'))
                    no_log_contains = _regex_list(out.get('no_log_contains'))
                    name = title if len(stages) == 1 else '%s.%d' % (title, idx + 1)
                    t = {
                        'name': name,
                        'test_title': title,
                        'stage': idx + 1,
                        'stages': len(stages),
                        'rule_file': rule_file,
                        'yaml': os.path.join(rule_file, fname),
                        'rule_id': rule_id,
                        'raw': raw,
                        'kind': kind,
                        'log_contains': log_contains,
                        'no_log_contains': no_log_contains,
                        'expect_ids': _ids_from_regexes(log_contains),
                        'forbid_ids': _ids_from_regexes(no_log_contains),
                        'status': out.get('status'),
                        'expect_error': out.get('expect_error'),
                        'enabled': enabled,
                        'notes': notes,
                    }
                    if enabled or include_disabled:
                        tests.append(t)
    return tests


def _default_tests_dir():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.normpath(os.path.join(repo, '..', 'shared', 'crs-tests'))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--tests', default=_default_tests_dir(),
                    help='CRS ftw test directory (default: <repo>/../shared/crs-tests)')
    ap.add_argument('--out', required=True, help='output directory for *.http + manifest.json')
    ap.add_argument('--skip-ok', action='store_true',
                    help='exit 77 (CTest "skipped") when the test directory is absent')
    args = ap.parse_args(argv)

    if not os.path.isdir(args.tests):
        print('crs_requests: CRS test directory not found: %s' % args.tests, file=sys.stderr)
        return 77 if args.skip_ok else 1

    tests = load_tests(args.tests)
    os.makedirs(args.out, exist_ok=True)
    manifest = []
    counts = {'tests': 0, 'disabled': 0, 'raw_request': 0, 'encoded_request': 0, 'notes': 0}
    for t in tests:
        if not t['enabled']:
            counts['disabled'] += 1
            continue
        counts['tests'] += 1
        if t['kind'] in counts:
            counts[t['kind']] += 1
        if t['notes']:
            counts['notes'] += 1
        path = os.path.join(args.out, t['name'] + '.http')
        with open(path, 'wb') as fd:
            fd.write(t['raw'])
        entry = {k: v for k, v in t.items() if k != 'raw'}
        entry['expect_ids'] = sorted(t['expect_ids'])
        entry['forbid_ids'] = sorted(t['forbid_ids'])
        entry['file'] = os.path.abspath(path)
        manifest.append(entry)
    with open(os.path.join(args.out, 'manifest.json'), 'w', encoding='utf-8') as fd:
        json.dump({'tests_dir': os.path.abspath(args.tests), 'tests': manifest}, fd, indent=1)
    print('tests: %d written, skipped disabled: %d, raw_request: %d, encoded_request: %d, '
          'with build notes: %d -> %s' % (counts['tests'], counts['disabled'], counts['raw_request'],
                                         counts['encoded_request'], counts['notes'], args.out))
    for t in tests:
        for n in t['notes']:
            print('  note %s: %s' % (t['name'], n))
    return 0


if __name__ == '__main__':
    sys.exit(main())
