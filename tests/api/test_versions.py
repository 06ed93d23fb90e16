from fastapi.testclient import TestClient


def test_discovery_needs_no_token(client: TestClient) -> None:
    for path in ("/", "/v2.1", "/v2.1/"):
        r = client.get(path, headers={"X-Auth-Token": ""})
        assert r.status_code == 200, path
    v = client.get("/v2.1/").json()["version"]
    assert (v["id"], v["min_version"], v["version"]) == ("v2.1", "2.1", "2.104")
    assert client.get("/").json()["versions"][0]["status"] == "CURRENT"


def test_microversion_headers_echoed(client: TestClient) -> None:
    r = client.get("/v2.1/flavors", headers={"OpenStack-API-Version": "compute 2.60"})
    assert r.headers["OpenStack-API-Version"] == "compute 2.60"
    assert r.headers["X-OpenStack-Nova-API-Version"] == "2.60"
    assert "OpenStack-API-Version" in r.headers["Vary"]
    assert "X-OpenStack-Nova-API-Version" in r.headers["Vary"]


def test_legacy_header_and_latest_and_default(client: TestClient) -> None:
    r = client.get("/v2.1/flavors", headers={"OpenStack-API-Version": "",
                                             "X-OpenStack-Nova-API-Version": "2.90"})
    assert r.headers["X-OpenStack-Nova-API-Version"] == "2.90"
    r = client.get("/v2.1/flavors", headers={"OpenStack-API-Version": "compute latest"})
    assert r.headers["OpenStack-API-Version"] == "compute 2.104"
    r = client.get("/v2.1/flavors", headers={"OpenStack-API-Version": ""})
    assert r.headers["OpenStack-API-Version"] == "compute 2.1"


def test_version_above_maximum_is_406(client: TestClient) -> None:
    r = client.get("/v2.1/flavors", headers={"OpenStack-API-Version": "compute 2.200"})
    assert r.status_code == 406
    assert r.json()["computeFault"]["code"] == 406


def test_malformed_version_is_400(client: TestClient) -> None:
    r = client.get("/v2.1/flavors", headers={"OpenStack-API-Version": "compute two"})
    assert r.status_code == 400
    assert "badRequest" in r.json()


def test_unknown_route_is_the_routers_404(client: TestClient) -> None:
    r = client.get("/v2.1/nothing-here")
    assert r.status_code == 404
    assert r.json()["code"] == "404 Not Found"  # webob's body, as the compute service's router


def test_flavors_and_images(client: TestClient) -> None:
    flavors = client.get("/v2.1/flavors/detail").json()["flavors"]
    assert {f["name"] for f in flavors} >= {"a1.tiny", "a1.small"}
    assert client.get("/v2.1/flavors/1").json()["flavor"]["vcpus"] == 1
    assert client.get("/v2.1/flavors/99").status_code == 404
    images = client.get("/v2.1/images").json()["images"]
    assert [i["name"] for i in images] == ["debian-busybox"]
    shown = client.get(f"/v2.1/images/{images[0]['id']}").json()["image"]
    assert shown["status"] == "ACTIVE"
    assert client.get("/v2.1/images/nope").status_code == 404

