"""sigv4.py signs as botocore's S3 signer does (pure unit: the same request signed by both)."""

import calendar
import time

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from cachefs.objects.sigv4 import Signer, host_of


@pytest.mark.parametrize("token", [None, "session-token"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9000/bkt/v/chunks/0/0/1_0_3",
    "https://s3.eu-west-1.amazonaws.com/b/odd%20name/%C3%A9%2B%2520%20~x",
    "http://[::1]:80/b/k",
])
def test_signature_matches_botocore(url, method, token):
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token).get_frozen_credentials()
    req = AWSRequest(method=method, url=url, data=b"body" if method == "PUT" else None)
    req.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    S3SigV4Auth(creds, "s3", "eu-west-1").add_auth(req)
    theirs = dict(req.headers.items())
    when = calendar.timegm(time.strptime(theirs["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
    path = "/" + url.split("/", 3)[3]
    ours = Signer("eu-west-1").headers(method, host_of(url), path, creds, when)
    for name, value in ours.items():
        assert theirs[name] == value, name


def test_host_header_omits_default_ports():
    assert host_of("http://h:80/b/") == "h"
    assert host_of("https://h:443/b/") == "h"
    assert host_of("http://h:9000/b/") == "h:9000"
    assert host_of("https://s3.amazonaws.com/b/") == "s3.amazonaws.com"
