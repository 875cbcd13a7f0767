#!/usr/bin/env python3
"""Drives a Cairn registry with oras-py (the ORAS Python SDK, `pip install oras`).

Run by tests/api/e2e.rs:

    python3 tests/e2e/oras_client.py --registry 127.0.0.1:PORT --repo e2e/oras --workdir DIR

It pushes an artifact with an artifactType (monolithic upload), the same kind of
artifact again with oras-py's chunked upload, attaches a referrer (a manifest
whose `subject` is the artifact), discovers it through the referrers API, pulls
everything back and compares bytes, lists tags and deletes the referrer's tag.
Every check that fails raises; on success the last line of stdout is a JSON
summary the Rust test cross-checks over raw HTTP.
"""

import argparse
import hashlib
import json
import os
import sys

import oras.oci
import oras.provider

ARTIFACT_TYPE = "application/vnd.cairn.e2e.artifact"
SBOM_TYPE = "application/vnd.cairn.e2e.sbom"
DATA_TYPE = "application/vnd.cairn.e2e.data"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


class Client(oras.provider.Registry):
    """oras-py's registry client; `push` has no artifactType parameter, so the
    manifest it builds gets one here, just before oras-py uploads it."""

    artifact_type = None

    def upload_manifest(self, manifest, container):
        if self.artifact_type:
            manifest["artifactType"] = self.artifact_type
        return super().upload_manifest(manifest, container)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def pushed_digest(resp) -> str:
    """The manifest digest Cairn announced, checked against the bytes oras-py sent."""
    check(resp.status_code == 201, f"manifest push: HTTP {resp.status_code} {resp.text}")
    announced = resp.headers.get("Docker-Content-Digest")
    sent = resp.request.body
    if isinstance(sent, str):
        sent = sent.encode()
    check(announced == sha256(sent), f"Docker-Content-Digest {announced} != sha256 of sent bytes {sha256(sent)}")
    return announced


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--registry", required=True)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--username")
    ap.add_argument("--password")
    args = ap.parse_args()

    os.chdir(args.workdir)
    base = f"{args.registry}/{args.repo}"
    client = Client(hostname=args.registry, insecure=True, tls_verify=False)
    if args.username:
        # Basic credentials for the token endpoint; oras-py then follows the
        # registry's Bearer challenges.
        client.auth.set_basic_auth(args.username, args.password)

    # Inputs: an empty JSON config, a binary payload, a larger one for the
    # chunked upload, and an SBOM for the referrer.
    with open("empty.json", "wb") as f:
        f.write(b"{}")
    payload = bytes((i * 7 + 3) % 251 for i in range(100_000))
    big = bytes((i * 13 + 5) % 253 for i in range(300_000))
    sbom = json.dumps({"spdxVersion": "SPDX-2.3", "name": "cairn-e2e"}).encode()
    os.makedirs("in", exist_ok=True)
    for name, data in (("payload.bin", payload), ("big.bin", big), ("sbom.json", sbom)):
        with open(os.path.join("in", name), "wb") as f:
            f.write(data)

    # 1. An artifact with an artifactType, blobs uploaded monolithically.
    client.artifact_type = ARTIFACT_TYPE
    resp = client.push(
        target=f"{base}:v1",
        files=[f"in/payload.bin:{DATA_TYPE}"],
        manifest_config=f"empty.json:{EMPTY_CONFIG}",
        manifest_annotations={"org.opencontainers.image.title": "cairn-e2e"},
        quiet=True,
    )
    artifact = pushed_digest(resp)
    artifact_size = len(resp.request.body)

    # 2. The same kind of artifact with oras-py's chunked upload (POST, PATCHes
    #    with Content-Range, PUT ?digest=), 64 KiB chunks.
    resp = client.push(
        target=f"{base}:v2-chunked",
        files=[f"in/big.bin:{DATA_TYPE}"],
        manifest_config=f"empty.json:{EMPTY_CONFIG}",
        do_chunked=True,
        chunk_size=64 * 1024,
        quiet=True,
    )
    chunked = pushed_digest(resp)

    # 3. A referrer: oras-py's push with a subject.
    client.artifact_type = SBOM_TYPE
    resp = client.push(
        target=f"{base}:v1-sbom",
        files=[f"in/sbom.json:application/spdx+json"],
        manifest_config=f"empty.json:{EMPTY_CONFIG}",
        subject=oras.oci.Subject(mediaType=OCI_MANIFEST, digest=artifact, size=artifact_size),
        quiet=True,
    )
    referrer = pushed_digest(resp)
    check(
        resp.headers.get("OCI-Subject") == artifact,
        f"OCI-Subject header {resp.headers.get('OCI-Subject')!r} != {artifact}",
    )
    client.artifact_type = None

    # 4. Discover it through the referrers API, unfiltered and filtered.
    url = f"http://{base}/referrers/{artifact}"
    r = client.do_request(f"http://{args.registry}/v2/{args.repo}/referrers/{artifact}", "GET")
    check(r.status_code == 200, f"GET {url}: HTTP {r.status_code} {r.text}")
    check(r.headers.get("Content-Type", "").startswith(OCI_INDEX), f"referrers Content-Type {r.headers.get('Content-Type')}")
    idx = r.json()
    found = [m for m in idx.get("manifests", []) if m["digest"] == referrer]
    check(len(found) == 1, f"referrer {referrer} not listed: {idx}")
    check(found[0].get("artifactType") == SBOM_TYPE, f"referrer artifactType: {found[0]}")
    check(found[0].get("mediaType") == OCI_MANIFEST, f"referrer mediaType: {found[0]}")
    r = client.do_request(
        f"http://{args.registry}/v2/{args.repo}/referrers/{artifact}?artifactType={SBOM_TYPE}", "GET"
    )
    check(r.status_code == 200 and len(r.json()["manifests"]) == 1, f"filtered referrers: {r.text}")
    check(r.headers.get("OCI-Filters-Applied") == "artifactType", f"OCI-Filters-Applied: {r.headers}")
    r = client.do_request(
        f"http://{args.registry}/v2/{args.repo}/referrers/{artifact}?artifactType=application/x-none", "GET"
    )
    check(r.status_code == 200 and r.json()["manifests"] == [], f"filtered (none) referrers: {r.text}")

    # 5. Pull everything back with oras-py and compare bytes.
    for tag, name, data in (("v1", "payload.bin", payload), ("v2-chunked", "big.bin", big), ("v1-sbom", "sbom.json", sbom)):
        out = os.path.join("out", tag)
        files = client.pull(target=f"{base}:{tag}", outdir=out)
        check(len(files) == 1, f"pull {tag}: {files}")
        check(os.path.basename(files[0]) == name, f"pull {tag}: got {files}")
        with open(files[0], "rb") as f:
            got = f.read()
        check(got == data, f"pull {tag}: {len(got)} bytes differ from the {len(data)} pushed")

    # The manifest by digest, as pushed (artifactType and subject intact).
    m = client.get_manifest(f"{base}@{referrer}")
    check(m.get("artifactType") == SBOM_TYPE, f"referrer manifest: {m}")
    check(m.get("subject", {}).get("digest") == artifact, f"referrer subject: {m}")
    m = client.get_manifest(f"{base}:v1")
    check(m.get("artifactType") == ARTIFACT_TYPE, f"artifact manifest: {m}")

    # 6. Tags, then oras-py's delete_tag (HEAD for Docker-Content-Digest, then a
    #    DELETE by digest that must answer 202).
    tags = sorted(client.get_tags(base))
    check(tags == ["v1", "v1-sbom", "v2-chunked"], f"tags: {tags}")
    check(client.get_tags(base, N=1) == ["v1"], "tags with N=1")
    check(client.delete_tag(base, "v1-sbom") is True, "delete_tag v1-sbom")
    tags = sorted(client.get_tags(base))
    check(tags == ["v1", "v2-chunked"], f"tags after delete: {tags}")
    r = client.do_request(f"http://{args.registry}/v2/{args.repo}/referrers/{artifact}", "GET")
    check(r.status_code == 200 and r.json()["manifests"] == [], f"referrers after delete: {r.text}")

    print(
        json.dumps(
            {
                "artifact": artifact,
                "chunked": chunked,
                "referrer": referrer,
                "payload": sha256(payload),
                "big": sha256(big),
                "tags": tags,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
