"""``bastion demo``: the shop through the whole chain, as a user runs it.

One demo process serves the module (starting it takes a few seconds); the tests that stop and
restart it use their own.
"""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bastion.cli.demo import DemoPorts

from .harness import DemoRun
from .harness import Shopper
from .harness import free_base
from .harness import ports_of
from .harness import running_demo
from .harness import start_demo

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    with running_demo(tmp_path_factory.mktemp("demo") / "data") as run:
        yield run


@pytest.fixture(scope="module")
def alice(demo: DemoRun) -> Shopper:
    return Shopper(demo, "alice")


def _machine_commands(printed: str) -> str:
    """The shell commands the terminal printed for the machine clients, in order."""
    return printed.split("Machine clients, without a browser:")[1].split("The mobile app")[0]


def test_the_printed_machine_client_commands_work_as_printed(demo: DemoRun) -> None:
    script = _machine_commands(demo.printed())
    assert "curl" in script
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, check=False)
    out = result.stdout
    assert result.returncode == 0, result.stderr
    statuses = re.findall(r"^HTTP/1\.1 (\d{3})", out, flags=re.MULTILINE)
    # no token; payments with the sync job's token; the partner's token after revocation
    assert statuses == ["401", "403", "401"], out
    assert 'www-authenticate: Bearer realm="bastion"\n' in out
    assert '"sku":"mug","quantity":40' in out
    assert 'error="insufficient_scope"' in out
    assert 'scope="payments:write"' in out
    assert '"stock":{' in out  # the partner's opaque token, introspected by gateway and service
    assert "The access token was revoked" in out  # at once, not when a cache entry expires
    stock = requests.get(demo.api + "/catalog/products", timeout=5)
    assert stock.status_code == 200


def test_terminal_names_the_shop_and_every_login(demo: DemoRun) -> None:
    printed = demo.printed()
    assert f"Shop                  {demo.shop}/" in printed
    for username in ("alice", "carol", "bob"):
        assert re.search(rf"^  {username}\s+{re.escape(demo.password(username))}\s", printed, re.MULTILINE)
    assert "Ctrl-C stops everything" in printed


def test_catalog_is_public_and_everything_else_needs_a_session(demo: DemoRun) -> None:
    catalog = requests.get(demo.shop + "/bff/api/catalog/products", timeout=5)
    assert catalog.status_code == 200
    assert catalog.headers["x-shop-service"] == "catalog"
    assert {p["sku"] for p in catalog.json()["products"]} >= {"mug", "tee"}
    orders = requests.get(demo.shop + "/bff/api/orders", timeout=5)
    assert orders.status_code == 401
    assert orders.json()["detail"] == "no session: sign in at /bff/login"
    # An anonymous call is never sent with a token, and dot segments do not reach other routes.
    sneaky = requests.get(demo.shop + "/bff/api/catalog/%2e%2e/orders", timeout=5)
    assert sneaky.status_code in (401, 404)
    assert "x-shop-service" not in sneaky.headers


def test_page_is_served_with_a_strict_policy(demo: DemoRun) -> None:
    page = requests.get(demo.shop + "/", timeout=5)
    assert page.status_code == 200
    assert "<title>Bastion Shop</title>" in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    script = requests.get(demo.shop + "/app.js", timeout=5)
    assert script.status_code == 200
    assert "X-CSRF-Token" in script.text


def test_an_order_reserves_stock_and_is_charged_with_the_services_own_token(
    demo: DemoRun, alice: Shopper
) -> None:
    sync = demo.machine_token("inventory-sync", "inventory:read")

    def stock() -> dict[str, int]:
        answer = requests.get(
            demo.api + "/inventory/stock", headers={"authorization": f"Bearer {sync}"}, timeout=5
        )
        assert answer.status_code == 200, answer.text
        return dict(answer.json()["stock"])

    before = stock()
    placed = alice.send(
        "POST", "/orders", {"items": [{"sku": "tee", "quantity": 2}, {"sku": "mug", "quantity": 1}]}
    )
    assert placed.status_code == 201, placed.text
    assert placed.headers["x-shop-service"] == "orders"
    order = placed.json()["order"]
    assert order["total"] == 2 * 2500 + 1200  # the catalog's prices, never the page's
    assert order["customer"] == "alice"
    assert order["owner_id"] == alice.me["claims"]["sub"]
    trail = {step["part"]: step["allowed_by"] for step in placed.json()["trail"]}
    assert trail["inventory"] == "scope inventory:reserve (a service token)"
    assert trail["payments"] == "scope payments:write (a service token)"
    after = stock()
    assert after["tee"] == before["tee"] - 2
    assert after["mug"] == before["mug"] - 1

    mine = alice.get("/orders")
    assert mine.status_code == 200
    assert order["id"] in [o["id"] for o in mine.json()["orders"]]
    assert mine.json()["allowed_by"] == "scope orders:read; owner(): your own orders only"


def test_no_customer_sees_anothers_order_not_even_by_guessing_ids(demo: DemoRun, alice: Shopper) -> None:
    placed = alice.send("POST", "/orders", {"items": [{"sku": "stickers", "quantity": 1}]})
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["order"]["id"]
    carol = Shopper(demo, "carol")
    assert order_id not in [o["id"] for o in carol.get("/orders").json()["orders"]]
    guessed = carol.get(f"/orders/{order_id}")
    missing = carol.get("/orders/999999")
    # Refused by the orders service itself (owner policy), answered exactly like a missing one.
    assert guessed.status_code == missing.status_code == 404
    assert guessed.headers["x-shop-service"] == "orders"
    assert guessed.json() == missing.json()
    assert alice.get(f"/orders/{order_id}").status_code == 200

    bob = Shopper(demo, "bob")
    everything = bob.get("/orders").json()
    assert order_id in [o["id"] for o in everything["orders"]]
    assert everything["allowed_by"] == "scope orders:read; role admin: every order"
    assert bob.get(f"/orders/{order_id}").status_code == 200


def test_only_an_admin_edits_products_and_no_customer_pays_directly(demo: DemoRun, alice: Shopper) -> None:
    refused = alice.send("PUT", "/admin/catalog/products/mug", {"price": 1})
    assert refused.status_code == 403
    assert "x-shop-service" not in refused.headers  # the gateway refused: alice has no catalog:write
    assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
    pay = alice.send("POST", "/payments/charges", {"amount": 100, "customer": "me"})
    assert pay.status_code == 403
    assert 'scope="payments:write"' in pay.headers["www-authenticate"]

    bob = Shopper(demo, "bob")
    edited = bob.send("PUT", "/admin/catalog/products/hoodie", {"price": 4500})
    assert edited.status_code == 200, edited.text
    assert edited.json()["allowed_by"] == "scope catalog:write and role admin"
    listed = requests.get(demo.shop + "/bff/api/catalog/products", timeout=5).json()["products"]
    assert {p["sku"]: p["price"] for p in listed}["hoodie"] == 4500
    bad = bob.send("PUT", "/admin/catalog/products/hoodie", {"price": "free"})
    assert bad.status_code == 400
    assert bad.json()["detail"] == "price must be a whole number from 1 to 10000000"


def test_a_service_refuses_a_token_without_the_gateway(demo: DemoRun, alice: Shopper) -> None:
    """Zero trust: a call that reaches a service directly still needs a valid token there."""
    orders = f"http://127.0.0.1:{demo.ports.service('orders')}/orders"
    bare = requests.get(orders, headers={"x-bastion-subject": alice.me["claims"]["sub"]}, timeout=5)
    assert bare.status_code == 401
    assert bare.headers["www-authenticate"] == 'Bearer realm="shop"'
    payments = f"http://127.0.0.1:{demo.ports.service('payments')}/charges"
    partner = demo.machine_token("partner-opaque", "inventory:read")
    assert partner.count(".") == 0
    charged = requests.post(payments, json={}, headers={"authorization": f"Bearer {partner}"}, timeout=5)
    assert charged.status_code == 401  # payments takes no opaque tokens at all


def test_stops_on_ctrl_c_reuses_its_data_and_names_a_port_in_use(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running_demo(data) as first:
        shopper = Shopper(first, "carol")
        placed = shopper.send("POST", "/orders", {"items": [{"sku": "mug", "quantity": 1}]})
        assert placed.status_code == 201
        password = first.password("carol")
        base = first.ports.base
    assert first.process.returncode == 0
    for port in ports_of(DemoPorts(base)):  # the services' process stopped too
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT, not a listener
            sock.bind(("127.0.0.1", port))
            sock.listen()

    with running_demo(data, base) as second:
        assert second.password("carol") == password
        shopper = Shopper(second, "carol")
        assert placed.json()["order"]["id"] in [o["id"] for o in shopper.get("/orders").json()["orders"]]

        # A second demo on the same ports: one line naming the port, nothing started.
        output = tmp_path / "clash.txt"
        clash = start_demo(tmp_path / "other", base, output)
        assert clash.wait(30) == 1
        assert f"cannot listen on 127.0.0.1:{base}" in output.read_text()
        assert "Traceback" not in output.read_text()
        assert not (tmp_path / "other").exists()


def test_a_port_taken_by_one_service_is_named(tmp_path: Path) -> None:
    ports = DemoPorts(free_base())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports.service("payments")))
        taken.listen()
        output = tmp_path / "out.txt"
        process = start_demo(tmp_path / "data", ports.base, output)
        assert process.wait(30) == 1
    text = output.read_text()
    assert f"cannot listen on 127.0.0.1:{ports.service('payments')}" in text
    assert "payments service" in text
    assert "Traceback" not in text
