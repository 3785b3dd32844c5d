"""The sandbox's query language and orderBy, checked against ground truth computed here."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sandbox_fixtures import sandbox_client

from codat_frames import sandbox


def when(v):
    """Independent date reading: Python's ISO parser; naive and date-only taken as UTC."""
    if not isinstance(v, str):
        return None
    d = datetime.fromisoformat(v)
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def s(v):
    return None if v is None else str(v).casefold()


@pytest.fixture(scope="module")
def qsb():
    with sandbox.serve(seed=11, customers=300, companies=2) as sb:
        yield sb


@pytest.fixture(scope="module")
def qclient(qsb):
    with sandbox_client(qsb) as c:
        yield c


def ids(qsb, qclient, params, platform="Stripe"):
    (co, cn), = [cc for cc in qsb.commerce_connections()
                 if qsb.connection_info(*cc).platform == platform]
    path = f"/companies/{co}/connections/{cn}/data/commerce-customers"
    r = qclient.get(path, params={"pageSize": 2000, **params})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["totalResults"] == len(body["results"])
    return [x["id"] for x in body["results"]], list(qsb.customer_records(co, cn))


def marks(records):
    """Data-derived query values: the median modifiedDate (Z) and a median createdDate day."""
    mods = sorted(when(r["modifiedDate"]) for r in records if r["modifiedDate"])
    cre = sorted(when(r["createdDate"]) for r in records if r["createdDate"][:4] != "0001")
    return {"mid": mods[len(mods) // 2].strftime("%Y-%m-%dT%H:%M:%SZ"),
            "midoff": mods[len(mods) // 2].strftime("%Y-%m-%dT%H:%M:%S+05:00"),
            "cday": cre[len(cre) // 2].strftime("%Y-%m-%d")}


CASES = [
    # (query, python predicate over the API record, data marks)
    ("defaultCurrency=gbp", lambda r, m: s(r.get("defaultCurrency")) == "gbp"),
    ("defaultCurrency=GBP", lambda r, m: s(r.get("defaultCurrency")) == "gbp"),
    ("defaultCurrency!=gbp", lambda r, m: r.get("defaultCurrency") is not None
     and s(r["defaultCurrency"]) != "gbp"),
    ("customerName~o'brien", lambda r, m: "o'brien" in (s(r.get("customerName")) or "\0")),
    ("CUSTOMERNAME ~ BUNNY", lambda r, m: "bunny" in (s(r.get("customerName")) or "\0")),
    ('customerName=""', lambda r, m: r.get("customerName") == ""),
    ('phone!=""', lambda r, m: r.get("phone") not in (None, "")),
    ("phone=(877) 492-8687", lambda r, m: r.get("phone") == "(877) 492-8687"),
    ("emailAddress~EXAMPLE.COM && phone=''",
     lambda r, m: "example.com" in (s(r.get("emailAddress")) or "\0") and r.get("phone") == ""),
    ("modifiedDate>={mid}", lambda r, m: r["modifiedDate"] is not None
     and when(r["modifiedDate"]) >= when(m["mid"])),
    ("modifiedDate<{mid}", lambda r, m: r["modifiedDate"] is not None
     and when(r["modifiedDate"]) < when(m["mid"])),
    ("modifiedDate={mid}", lambda r, m: r["modifiedDate"] is not None
     and when(r["modifiedDate"]) == when(m["mid"])),
    ("modifiedDate>{midoff}", lambda r, m: r["modifiedDate"] is not None
     and when(r["modifiedDate"]) > when(m["midoff"])),
    ("createdDate>{cday}", lambda r, m: r.get("createdDate") is not None
     and when(r["createdDate"]) > when(m["cday"])),
    ("createdDate<={cday}", lambda r, m: r.get("createdDate") is not None
     and when(r["createdDate"]) <= when(m["cday"])),
    ("createdDate=0001-01-01T00:00:00",
     lambda r, m: r.get("createdDate") == "0001-01-01T00:00:00"),
    ("{customerName~a || customerName~e} && defaultCurrency=usd",
     lambda r, m: ("a" in (s(r.get("customerName")) or "") or "e" in (s(r.get("customerName"))
                or "")) and s(r.get("defaultCurrency")) == "usd"),
    # && binds tighter than ||
    ("defaultCurrency=usd || defaultCurrency=eur && customerName~z",
     lambda r, m: s(r.get("defaultCurrency")) == "usd"
     or (s(r.get("defaultCurrency")) == "eur" and "z" in (s(r.get("customerName")) or ""))),
    ("{defaultCurrency=usd || defaultCurrency=eur} && customerName~z",
     lambda r, m: s(r.get("defaultCurrency")) in ("usd", "eur")
     and "z" in (s(r.get("customerName")) or "")),
    ("note~\"'; select\"", lambda r, m: "'; select" in (s(r.get("note")) or "\0")),
    ('note~"\\"VIP\\""', lambda r, m: '"vip"' in (s(r.get("note")) or "\0")),
    ("id>cus_m", lambda r, m: s(r["id"]) > "cus_m"),
]


@pytest.mark.parametrize("query,pred", CASES, ids=[c[0] for c in CASES])
def test_query_matches_ground_truth(qsb, qclient, query, pred):
    _, records = ids(qsb, qclient, {})
    m = marks(records)
    for k, v in m.items():
        query = query.replace("{" + k + "}", v)
    got, _ = ids(qsb, qclient, {"query": query})
    want = [r["id"] for r in records if pred(r, m)]
    assert got == want
    assert 0 < len(want) < len(records)


def test_query_on_other_id_shapes(qsb, qclient):
    got, records = ids(qsb, qclient, {}, platform="Shopify")
    target = records[17]["id"]
    assert target.isdigit()
    assert ids(qsb, qclient, {"query": f"id={target}"}, platform="Shopify")[0] == [target]
    assert ids(qsb, qclient, {"query": f'id="{target}"'}, platform="Shopify")[0] == [target]


def test_query_paging_counts_after_filter(qsb, qclient):
    (co, cn) = qsb.commerce_connections()[0]
    path = f"/companies/{co}/connections/{cn}/data/commerce-customers"
    records = list(qsb.customer_records(co, cn))
    t1 = marks(records)["mid"]
    want = [r["id"] for r in records
            if r["modifiedDate"] is not None and when(r["modifiedDate"]) >= when(t1)]
    got = []
    for page in range(1, 100):
        body = qclient.get(path, params={"query": f"modifiedDate>={t1}", "pageSize": 7,
                                         "page": page}).json()
        assert body["totalResults"] == len(want)
        got += [x["id"] for x in body["results"]]
        if "next" not in body["_links"]:
            assert "query=modifiedDate%3E%3D" in body["_links"]["current"]["href"]
            break
    assert got == want


@pytest.mark.parametrize("order", ["modifiedDate", "-modifiedDate", "customerName",
                                   "-createdDate", "id", "-phone"])
def test_order_by(qsb, qclient, order):
    got, records = ids(qsb, qclient, {"orderBy": order})
    prop = order.lstrip("-")
    desc = order.startswith("-")

    def key(r):
        v = r.get(prop)
        k = when(v) if prop.endswith("Date") else s(v)
        return (0, datetime.min.replace(tzinfo=UTC) if prop.endswith("Date") else "") \
            if k is None else (1, k)

    want = [r["id"] for r in sorted(records, key=key, reverse=desc)]
    assert got == want


def test_order_by_with_query(qsb, qclient):
    got, records = ids(qsb, qclient, {"orderBy": "-modifiedDate", "query": "defaultCurrency=gbp"})
    sel = [r for r in records if s(r.get("defaultCurrency")) == "gbp"]
    assert got == [r["id"] for r in sorted(sel, key=lambda r: (r["modifiedDate"] is not None,
               when(r["modifiedDate"]) if r["modifiedDate"] else 0), reverse=True)]


MALFORMED = [
    "", "   ", "id", "id=", "id==1", "id=1 &&", "&& id=1", "{id=1", "id=1}", "id=1 & x=2",
    "id=1 | x=2", "customerName~", "note~'; select", "name=a<b", "modifiedDate>notadate",
    "modifiedDate~2020",
    'id="unterminated', "1abc=2", "id 1", "{}", "id=1 id=2", "x" * 2050,
]


@pytest.mark.parametrize("query", MALFORMED, ids=[q[:20] or "empty" for q in MALFORMED])
def test_malformed_query_400(qsb, qclient, query):
    (co, cn) = qsb.commerce_connections()[0]
    path = f"/companies/{co}/connections/{cn}/data/commerce-customers"
    r = qclient.get(path, params={"query": query})
    if not query.strip():
        assert r.status_code == 200  # an empty query is no query
        return
    assert r.status_code == 400
    assert r.json()["error"] == "Error parsing query - Malformed query."


@pytest.mark.parametrize("prop", ["foo", "addresses", "addresses.city", "customerName.x"])
def test_unknown_or_array_property_400(qsb, qclient, prop):
    (co, cn) = qsb.commerce_connections()[0]
    path = f"/companies/{co}/connections/{cn}/data/commerce-customers"
    r = qclient.get(path, params={"query": f"{prop}=London"})
    assert r.status_code == 400
    want = f"Error parsing query - Could not resolve property {prop} on Dataset"
    assert r.json()["error"] == want
    r = qclient.get(path, params={"orderBy": prop})
    assert r.status_code == 400 and prop in r.json()["error"]


def test_query_companies_and_connections(qsb, qclient):
    comps = qsb.companies
    name = comps[1]["name"]
    body = qclient.get("/companies", params={"query": f'name="{name.upper()}"'}).json()
    assert [c["id"] for c in body["results"]] == [comps[1]["id"]]
    body = qclient.get("/companies", params={"query": f"tags.uid={comps[0]['tags']['uid']}"})
    assert [c["id"] for c in body.json()["results"]] == [comps[0]["id"]]
    body = qclient.get("/companies", params={"orderBy": "-name"}).json()
    assert [c["name"] for c in body["results"]] == sorted((c["name"] for c in comps),
                                                          key=str.casefold, reverse=True)
    co = comps[1]["id"]
    want = [k["id"] for k in qsb.connections(co) if k["status"] == "Linked"]
    body = qclient.get(f"/companies/{co}/connections", params={"query": "status=linked"}).json()
    assert [k["id"] for k in body["results"]] == want
    r = qclient.get(f"/companies/{co}/connections", params={"query": "nope=1"})
    assert r.status_code == 400


def test_date_reader_agrees_with_python():
    for v in ("2022-06-15T15:54:15Z", "2022-01-18T11:41:54", "2021-11-15T01:00:00-05:00",
              "2022-10-23", "2022-10-27T10:22:43.6464237Z", "0001-01-01T00:00:00"):
        ticks = sandbox.parse_date_ticks(v)
        d = when(v)
        ref = (d.replace(tzinfo=None) - d.utcoffset() - datetime(1, 1, 1)) if d.year > 1 \
            else (d.replace(tzinfo=None) - datetime(1, 1, 1))
        assert ticks // 10 == ref.days * 86_400_000_000 + ref.seconds * 1_000_000 \
            + ref.microseconds, v
    assert sandbox.parse_date_ticks("2022-13-01") is None
    assert sandbox.parse_date_ticks(None) is None
