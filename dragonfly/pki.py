"""``dragonfly-pki``: a small certificate authority for a dragonfly fleet.

C{dragonfly-pki init DIR} makes the fleet's CA (C{DIR/ca.pem}, and its key
C{DIR/ca.key}, mode 0600); C{dragonfly-pki issue DIR NAME [--ip IP]...
[--dns NAME]...} a node certificate and key signed by it (C{DIR/NAME.pem},
C{DIR/NAME.key}, mode 0600) for both TLS server and client use, whose names are
NAME (common name and first DNS name: peers name themselves after it, see
L{dragonfly.tls.peer_id_allowed}) and the given DNS names and addresses. Keys
are ECDSA P-256; the CA lives 10 years, a node certificate 1 year (C{--days}).
Nothing is ever overwritten. Standard library and C{cryptography} only;
imports no role.
"""
import argparse
import datetime
import ipaddress
import os
import re
import sys

__all__ = ["PKIError", "init_ca", "issue", "main", "run", "CA_DAYS", "NODE_DAYS"]

CA_DAYS = 3650
NODE_DAYS = 365
_NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
_LABEL = r"[A-Za-z0-9][A-Za-z0-9-]{0,62}"
_DNS_RE = re.compile(rf"\A(\*\.)?{_LABEL}(\.{_LABEL})*\Z")


class PKIError(Exception):
    """A refusal to print as C{dragonfly-pki: error: <message>}."""


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _new_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key):
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert):
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _write_new(path, data, mode):
    """Create C{path} with C{data} and C{mode}; PKIError if it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise PKIError(f"{path} exists; not overwriting it")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def _refuse_existing(*paths):
    for path in paths:
        if os.path.exists(path):
            raise PKIError(f"{path} exists; not overwriting it")


def init_ca(directory, name="dragonfly CA", days=CA_DAYS, now=None):
    """Make a CA in C{directory} (created 0700 if missing): (ca.pem, ca.key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    os.makedirs(directory, mode=0o700, exist_ok=True)
    cert_path, key_path = os.path.join(directory, "ca.pem"), os.path.join(directory, "ca.key")
    _refuse_existing(cert_path, key_path)
    now = now or _now()
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    _write_new(key_path, _key_pem(key), 0o600)
    _write_new(cert_path, _cert_pem(cert), 0o644)
    return cert_path, key_path


def _load_ca(directory):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert_path, key_path = os.path.join(directory, "ca.pem"), os.path.join(directory, "ca.key")
    try:
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except FileNotFoundError as e:
        raise PKIError(f"{e.filename}: no such file (run `dragonfly-pki init {directory}` first)")
    except (OSError, ValueError, TypeError) as e:
        raise PKIError(f"cannot read the CA in {directory}: {e}")
    return cert, key


def _alt_names(name, dns, ips):
    from cryptography import x509

    names, seen = [], set()
    for n in ([name] if _DNS_RE.match(name) else []) + list(dns):
        if not _DNS_RE.match(n):
            raise PKIError(f"--dns: not a DNS name: {n!r}")
        if n.lower() not in seen:
            seen.add(n.lower())
            names.append(x509.DNSName(n))
    for text in ips:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            raise PKIError(f"--ip: not an IP address: {text!r}")
        if str(ip) not in seen:
            seen.add(str(ip))
            names.append(x509.IPAddress(ip))
    return names


def issue(directory, name, ips=(), dns=(), days=NODE_DAYS, now=None):
    """A node certificate and key for C{name}, signed by the CA in C{directory}:
    (NAME.pem, NAME.key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    if not _NAME_RE.match(name) or name in ("ca",):
        raise PKIError(f"not a usable node name: {name!r} "
                       "(letters, digits, '.', '-', '_'; not 'ca')")
    ca_cert, ca_key = _load_ca(directory)
    cert_path = os.path.join(directory, name + ".pem")
    key_path = os.path.join(directory, name + ".key")
    _refuse_existing(cert_path, key_path)
    now = now or _now()
    if now + datetime.timedelta(days=days) > ca_cert.not_valid_after_utc:
        raise PKIError(f"the CA expires on {ca_cert.not_valid_after_utc:%Y-%m-%d}, before "
                       f"a {days}-day certificate would")
    key = _new_key()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=True, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(_alt_names(name, dns, ips)), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_new(key_path, _key_pem(key), 0o600)
    _write_new(cert_path, _cert_pem(cert), 0o644)
    return cert_path, key_path


def _parser():
    p = argparse.ArgumentParser(prog="dragonfly-pki",
                                description="Certificates for a dragonfly fleet's mutual TLS.")
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("init", help="make a CA in DIR (ca.pem, ca.key)")
    i.add_argument("dir")
    i.add_argument("--name", default="dragonfly CA", help="the CA's common name")
    i.add_argument("--days", type=int, default=CA_DAYS, help="lifetime (default %(default)s)")
    n = sub.add_parser("issue", help="issue DIR/NAME.pem and DIR/NAME.key from the CA in DIR")
    n.add_argument("dir")
    n.add_argument("name")
    n.add_argument("--ip", action="append", default=[], help="an IP address it serves on")
    n.add_argument("--dns", action="append", default=[], help="another DNS name it serves as")
    n.add_argument("--days", type=int, default=NODE_DAYS, help="lifetime (default %(default)s)")
    return p


def main(argv, stdout=None, stderr=None):
    """Run C{dragonfly-pki} with C{argv} (without the program name): exit status."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    args = _parser().parse_args(argv)
    try:
        if args.days < 1:
            raise PKIError("--days must be at least 1")
        if args.command == "init":
            paths = init_ca(args.dir, args.name, args.days)
        else:
            paths = issue(args.dir, args.name, args.ip, args.dns, args.days)
    except PKIError as e:
        stderr.write(f"dragonfly-pki: error: {e}\n")
        return 1
    for path in paths:
        stdout.write(path + "\n")
    return 0


def run():
    """The console script."""
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    run()
