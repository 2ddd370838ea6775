"""A small RFC 3161 time-stamp authority over HTTP, on 127.0.0.1, for tests.

It answers a TimeStampReq with a token signed by its own RSA key and certificate (CMS SignedData
over a TSTInfo with the request's imprint and nonce). ``refuse`` makes it answer "rejection";
``stall`` holds each request unanswered until ``released`` is set.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

from asn1crypto import cms, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


class Tsa:
    def __init__(self, name: str = "Test TSA") -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=365))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_der = self.cert.public_bytes(serialization.Encoding.DER)
        self.refuse = False
        self.stall = False  # hold every request unanswered until released (a process killed while it waits)
        self.stalled = threading.Event()  # set when a request is being held
        self.released = threading.Event()
        self.requests = 0
        self.url = ""

    def answer(self, body: bytes) -> bytes:
        self.requests += 1
        if self.refuse:
            return bytes.fromhex("3005" "3003" "020102")  # TimeStampResp {status {rejection}}, no token
        query = tsp.TimeStampReq.load(body)
        tst = tsp.TSTInfo({
            "version": "v1", "policy": "1.3.6.1.4.1.99999.1", "message_imprint": query["message_imprint"],
            "serial_number": self.requests, "gen_time": datetime.now(UTC).replace(microsecond=0),
            "nonce": query["nonce"].native,
        })  # fmt: skip
        tst_der = tst.dump()
        attrs = cms.CMSAttributes([
            cms.CMSAttribute({"type": "content_type", "values": ["tst_info"]}),
            cms.CMSAttribute({"type": "message_digest", "values": [hashlib.sha256(tst_der).digest()]}),
        ])  # fmt: skip
        signature = self.key.sign(attrs.dump(), padding.PKCS1v15(), hashes.SHA256())
        cert = asn1_x509.Certificate.load(self.cert_der)
        signer = cms.SignerInfo({
            "version": "v1",
            "sid": cms.SignerIdentifier({"issuer_and_serial_number": cms.IssuerAndSerialNumber(
                {"issuer": cert.issuer, "serial_number": cert.serial_number})}),
            "digest_algorithm": {"algorithm": "sha256"}, "signed_attrs": attrs,
            "signature_algorithm": {"algorithm": "sha256_rsa"}, "signature": signature,
        })  # fmt: skip
        signed = cms.SignedData({
            "version": "v3", "digest_algorithms": [{"algorithm": "sha256"}],
            "encap_content_info": {"content_type": "tst_info", "content": tst}, "certificates": [cert],
            "signer_infos": [signer],
        })  # fmt: skip
        token = cms.ContentInfo({"content_type": "signed_data", "content": signed})
        return tsp.TimeStampResp({"status": {"status": "granted"}, "time_stamp_token": token}).dump()


@contextmanager
def serving_tsa(tsa: Tsa | None = None) -> Iterator[Tsa]:
    authority = tsa or Tsa()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if authority.stall:
                authority.stalled.set()
                authority.released.wait(60)
            answer = authority.answer(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/timestamp-reply")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    authority.url = f"http://127.0.0.1:{server.server_address[1]}/tsa"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield authority
    finally:
        authority.released.set()
        server.shutdown()
        server.server_close()
