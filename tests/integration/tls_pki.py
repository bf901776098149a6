#!/usr/bin/env python3
"""A throwaway test PKI for Moat's TLS tests, made with the openssl CLI.

generate(directory) writes everything into `directory` and returns a dict of
paths (see the keys in generate()). Keys are ECDSA P-256 except one RSA-2048
key, so the whole PKI takes well under a second. Nothing here is secret:
the keys live in a temporary directory and the certificates last 30 days.

issue_server_cert() is public so tests can mint replacement certificates
(a new serial, optionally a new key) for reload tests.

Run directly to generate into a directory and print the paths:
    python3 tls_pki.py [DIR]
"""
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time

DAYS = 30


def _openssl(*args, stdin=None):
    r = subprocess.run(["openssl", *args], input=stdin, capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed ({r.returncode}):\n"
                           + r.stderr.decode(errors="replace"))
    return r.stdout


def _write(path, text, mode="w"):
    with open(path, mode) as f:
        f.write(text)
    return path


def ec_key(path):
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-pkeyopt", "ec_param_enc:named_curve", "-out", path)
    return path


def rsa_key(path, bits=2048):
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{bits}", "-out", path)
    return path


def _serial():
    # Positive, at most 63 bits, never zero: every certificate gets its own.
    return secrets.randbits(62) | (1 << 62)


def make_ca(d, name, subject):
    key = ec_key(os.path.join(d, name + ".key"))
    cert = os.path.join(d, name + ".pem")
    _openssl("req", "-x509", "-new", "-key", key, "-subj", subject, "-days", str(DAYS),
             "-sha256", "-set_serial", str(_serial()),
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
             "-addext", "subjectKeyIdentifier=hash",
             "-out", cert)
    return cert, key


def _sign(d, stem, key, subject, ca_cert, ca_key, extensions, serial=None):
    csr = os.path.join(d, stem + ".csr")
    ext = _write(os.path.join(d, stem + ".ext"), "[v3]\n" + "\n".join(extensions) + "\n")
    cert = os.path.join(d, stem + ".pem")
    _openssl("req", "-new", "-key", key, "-subj", subject, "-out", csr)
    _openssl("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key,
             "-set_serial", str(serial if serial is not None else _serial()),
             "-days", str(DAYS), "-sha256", "-extfile", ext, "-extensions", "v3", "-out", cert)
    os.remove(csr)
    os.remove(ext)
    return cert


def issue_server_cert(d, stem, sans, ca_cert, ca_key, key_type="ec", key=None, serial=None):
    """Writes d/stem.pem (leaf only) signed by ca, for DNS/IP `sans` (the
    first DNS name is also the CN). Makes d/stem.key unless `key` is given.
    Returns (cert_path, key_path)."""
    if key is None:
        key = os.path.join(d, stem + ".key")
        (ec_key if key_type == "ec" else rsa_key)(key)
    alt = ", ".join(("IP:" + s[3:]) if s.startswith("IP:") else ("DNS:" + s) for s in sans)
    cn = next(s for s in sans if not s.startswith("IP:"))
    usage = "digitalSignature" if key_type == "ec" else "digitalSignature,keyEncipherment"
    cert = _sign(d, stem, key, "/CN=" + cn, ca_cert, ca_key, [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical," + usage,
        "extendedKeyUsage=serverAuth",
        "subjectAltName=" + alt,
        "authorityKeyIdentifier=keyid",
    ], serial)
    return cert, key


def issue_client_cert(d, stem, subject, ca_cert, ca_key):
    key = ec_key(os.path.join(d, stem + ".key"))
    cert = _sign(d, stem, key, subject, ca_cert, ca_key, [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature",
        "extendedKeyUsage=clientAuth",
        "authorityKeyIdentifier=keyid",
    ])
    return cert, key


def cert_serial(cert):
    """The certificate's serial number as an int."""
    out = _openssl("x509", "-in", cert, "-noout", "-serial").decode()
    return int(out.strip().split("=", 1)[1], 16)


def _index_line(cert):
    serial = "%X" % cert_serial(cert)
    if len(serial) % 2:
        serial = "0" + serial
    subject = _openssl("x509", "-in", cert, "-noout", "-subject", "-nameopt", "compat").decode()
    subject = subject.strip().split("=", 1)[1]
    expiry = time.strftime("%y%m%d%H%M%SZ", time.gmtime(time.time() + DAYS * 86400))
    # status, expiry, revocation date (none), serial, file name, DN
    return f"V\t{expiry}\t\t{serial}\tunknown\t{subject}\n"


def ocsp_response(d, out, cert, ca_cert, ca_key, index, days):
    """Signs a DER OCSP response ('good') for `cert`, valid for `days`."""
    _openssl("ocsp", "-index", index, "-rsigner", ca_cert, "-rkey", ca_key,
             "-CA", ca_cert, "-issuer", ca_cert, "-cert", cert, "-no_nonce", "-resp_no_certs",
             "-ndays", str(days), "-respout", out)
    return out


def generate(d):
    """Generates the whole test PKI into directory `d` (created if needed)
    and returns a dict of absolute paths."""
    os.makedirs(d, exist_ok=True)
    d = os.path.abspath(d)
    p = {"dir": d}
    p["ca_cert"], p["ca_key"] = make_ca(d, "ca", "/O=Moat Tests/CN=Moat Test Root CA")

    # Server certificates, all from the root CA. The ECDSA and RSA ones share
    # their names so a listener can serve them side by side.
    p["ecdsa_cert"], p["ecdsa_key"] = issue_server_cert(
        d, "ab-ecdsa", ["a.test", "*.b.test"], p["ca_cert"], p["ca_key"], "ec")
    p["rsa_cert"], p["rsa_key"] = issue_server_cert(
        d, "ab-rsa", ["a.test", "*.b.test"], p["ca_cert"], p["ca_key"], "rsa")
    p["default_cert"], p["default_key"] = issue_server_cert(
        d, "default", ["default.test"], p["ca_cert"], p["ca_key"], "ec")
    p["backend_cert"], p["backend_key"] = issue_server_cert(
        d, "backend", ["backend.test", "IP:127.0.0.1"], p["ca_cert"], p["ca_key"], "ec")

    # Client certificates: a trusted client CA, and a second CA nobody trusts
    # issuing a certificate with the very same subject.
    p["client_ca_cert"], p["client_ca_key"] = make_ca(d, "client-ca", "/O=Moat Tests/CN=Moat Client CA")
    p["client_cert"], p["client_key"] = issue_client_cert(
        d, "client-one", "/CN=client-one/O=Moat Tests", p["client_ca_cert"], p["client_ca_key"])
    p["rogue_ca_cert"], p["rogue_ca_key"] = make_ca(d, "rogue-ca", "/O=Moat Tests/CN=Moat Client CA")
    p["rogue_client_cert"], p["rogue_client_key"] = issue_client_cert(
        d, "rogue-client", "/CN=client-one/O=Moat Tests", p["rogue_ca_cert"], p["rogue_ca_key"])

    # OCSP: an index with the default certificate marked valid, and two
    # different 'good' responses (different validity, so This/Next Update
    # and the bytes differ) for file-replacement tests.
    p["ocsp_index"] = _write(os.path.join(d, "index.txt"), _index_line(p["default_cert"]))
    _write(os.path.join(d, "index.txt.attr"), "unique_subject = no\n")
    p["ocsp_resp"] = ocsp_response(d, os.path.join(d, "ocsp-1.der"), p["default_cert"],
                                   p["ca_cert"], p["ca_key"], p["ocsp_index"], 1)
    p["ocsp_resp2"] = ocsp_response(d, os.path.join(d, "ocsp-2.der"), p["default_cert"],
                                    p["ca_cert"], p["ca_key"], p["ocsp_index"], 2)

    # Deliberately bad material.
    p["broken_cert"] = _write(os.path.join(d, "broken.pem"),
                              "-----BEGIN CERTIFICATE-----\nTUlJQm9uZSBicm9rZW4gY2VydA==!!\n"
                              "this is not base64 @@@\n-----END CERTIFICATE-----\n")
    p["mismatched_key"] = ec_key(os.path.join(d, "mismatched.key"))  # pairs with no cert

    # Cert and key in one file, the form HAProxy's `crt` takes.
    for name in ("ecdsa", "rsa", "default"):
        combined = os.path.join(d, name + "-combined.pem")
        with open(combined, "w") as out:
            for part in (p[name + "_cert"], p[name + "_key"]):
                with open(part) as f:
                    out.write(f.read())
        p[name + "_combined"] = combined
    return p


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="moat-pki-")
    t0 = time.time()
    paths = generate(d)
    print(json.dumps(paths, indent=2))
    print(f"generated in {time.time() - t0:.2f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
