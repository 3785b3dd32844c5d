"""Deterministic sandbox data: companies, connections and lazily generated customers.

Customers are never held as a big list: record ``i`` of a connection is generated on demand
from ``(seed, connection, i)``; ids are an invertible encoding of ``i`` so a customer is found
by id in O(1). Changes (inserts, deletes, modifications) live in a small overlay.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
import re
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from codat_frames.sandbox._query import Dataset

CUSTOMERS_DATASET = Dataset(
    {
        "id": "string",
        "customerName": "string",
        "emailAddress": "string",
        "phone": "string",
        "defaultCurrency": "string",
        "note": "string",
        "createdDate": "date",
        "modifiedDate": "date",
        "sourceModifiedDate": "date",
        "addresses": "array",
    }
)
COMPANIES_DATASET = Dataset(
    {
        "id": "string",
        "name": "string",
        "description": "string",
        "platform": "string",
        "redirect": "string",
        "lastSync": "date",
        "created": "date",
        "createdByUserName": "string",
        "products": "array",
        "tags": "object",
        "referenceParentCompany": "object",
        "referenceParentCompany.id": "string",
        "referenceParentCompany.name": "string",
        "referenceSubsidiaryCompanies": "array",
        "dataConnections": "array",
    },
    {"tags": "string"},
)
CONNECTIONS_DATASET = Dataset(
    {
        "id": "string",
        "integrationId": "string",
        "integrationKey": "string",
        "sourceId": "string",
        "sourceType": "string",
        "platformName": "string",
        "linkUrl": "string",
        "status": "string",
        "lastSync": "date",
        "created": "date",
        "dataConnectionErrors": "array",
        "connectionInfo": "object",
    },
    {"connectionInfo": "string"},
)

# platform name -> (integrationKey, sourceType, id format)
PLATFORMS: dict[str, tuple[str, str, str]] = {
    "Shopify": ("tgff", "Commerce", "shopify"),
    "Square": ("gbol", "Commerce", "square"),
    "Stripe": ("hbql", "Commerce", "stripe"),
    "Clover": ("nrij", "Commerce", "clover"),
    "Mollie": ("igfa", "Commerce", "mollie"),
    "BigCommerce": ("jgnh", "Commerce", "seq"),
    "WooCommerce": ("lmxq", "Commerce", "woo"),
    "PrestaShop": ("rokd", "Commerce", "uuid"),
    "Zettle": ("pkfb", "Commerce", "email"),
    "Xero": ("gbol", "Accounting", ""),
    "QuickBooks Online": ("qhyg", "Accounting", ""),
    "Sage Business Cloud Accounting": ("tgff", "Accounting", ""),
    "Plaid": ("dfxm", "Banking", ""),
}
COMMERCE_PLATFORMS = [p for p, v in PLATFORMS.items() if v[1] == "Commerce"]
OTHER_PLATFORMS = [p for p, v in PLATFORMS.items() if v[1] != "Commerce"]

COMPANY_NAMES = [
    "Toft Stores",
    "Bäckerei Müller GmbH",
    "Café Lumière",
    "O'Brien & Sons Ltd.",
    "株式会社さくら商店",
    "Nordlys Ås Design",
    "Technicalium",
    "Łódź Rowery Sp. z o.o.",
    "Kühne + Nagel \"Outlet\"",
    "Ελληνικά Προϊόντα",
    "Green Leaf Grocers",
    "Señor Taco Truck",
]

# The default layout: per company, (platform, status, synced) for each connection.
# Company 2's Stripe connection is Linked but "not yet synced" (409).
DEFAULT_LAYOUT: list[list[tuple[str, str, bool]]] = [
    [("Shopify", "Linked", True)],
    [("Square", "Linked", True), ("Stripe", "Linked", True)],
    [("Mollie", "Linked", True), ("Stripe", "Linked", False), ("Square", "PendingAuth", False)],
    [("Clover", "Linked", True), ("WooCommerce", "Linked", True),
     ("Shopify", "Deauthorized", False)],
    [("BigCommerce", "Linked", True), ("Zettle", "Linked", True), ("Xero", "Linked", True)],
    [("PrestaShop", "Linked", True), ("QuickBooks Online", "PendingAuth", False),
     ("Plaid", "Linked", True)],
]

FIRST = [
    "Amy", "Bob", "Fred", "Zoë", "José", "Søren", "Łukasz", "Björk", "Aoife", "Chloé",
    "Mohammed", "Priya", "Wei", "Olamide", "Siobhán", "Ana", "Jürgen", "Hana", "Daffy", "Bugs",
]
LAST = [
    "Smith", "Jones", "O'Brien", "D'Angelo", "Müller", "Nguyễn", "García", "Kowalski",
    "Andersson", "Dubois", "李", "Tanaka", "Okafor", "Ní Bhriain", "Baggins", "Bunny", "Duck",
]
EMAIL_ASCII = {"ë": "e", "é": "e", "ø": "o", "ł": "l", "ö": "o", "á": "a", "ü": "u", "ễ": "e",
               "í": "i", "ñ": "n", "ó": "o", "ł".upper(): "L", "'": "", " ": ""}
CITIES = [
    ("London", "England", "United Kingdom", "WC1X 0BE"),
    ("Portsmouth", "", "United Kingdom", "PS13HJ"),
    ("Paris", "Île-de-France", "France", "75001"),
    ("München", "Bayern", "Germany", "80331"),
    ("New York", "NY", "US", "10001"),
    ("Kraków", "Małopolskie", "PL", "31-000"),
    ("東京", "東京都", "JP", "100-0001"),
    ("Dublin", "Leinster", "IE", "D02 X285"),
]
LINE1 = [
    "301 Ink Rooms", "1 Main Street", "Flat 20", "My Billing Address ./*drop table",
    "Robert'); DROP TABLE customers;--", "This is my address, I cant hit enter.",
    "12 \"Quoted\" Lane", "Rue de l'Église 3", "1 test street", "Look Street", "",
]
NOTES = [
    "Regular customer", "Handle with care", "", "O'Reilly's \"VIP\" account",
    "Client fidèle ✓", "'; SELECT * FROM users; --", "Test Subscription", "多次购买",
]
PHONES = ["+44 25691 154789", "(877) 492-8687", "01224 658 999", "+1-202-555-0181",
          "07770 666777", "+447545309714"]

_A = 2654435761  # prime multiplier for the invertible id permutations
_B36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _enc(k: int, alphabet: str, width: int) -> str:
    out = []
    base = len(alphabet)
    for _ in range(width):
        k, r = divmod(k, base)
        out.append(alphabet[r])
    return "".join(reversed(out))


def _dec(s: str, alphabet: str) -> int | None:
    k = 0
    base = len(alphabet)
    for c in s:
        v = alphabet.find(c)
        if v < 0:
            return None
        k = k * base + v
    return k


class _Perm:
    """Bijection on [0, m): i -> (i * a + b) mod m, with a coprime to m (well mixed)."""

    def __init__(self, m: int, b: int) -> None:
        self.m = m
        self.b = int(hashlib.sha512(str(b).encode()).hexdigest(), 16) % m
        a = int.from_bytes(hashlib.sha256(f"{_A}:{m}".encode()).digest(), "big") % m
        while math.gcd(a, m) != 1:
            a += 1
        self.a = a
        self.inv = pow(a, -1, m)

    def fwd(self, i: int) -> int:
        return (i * self.a + self.b) % self.m

    def back(self, k: int) -> int:
        return ((k - self.b) * self.inv) % self.m


class IdCodec:
    """Invertible per-platform id shapes: index <-> id string."""

    def __init__(self, fmt: str, salt: int) -> None:
        self.fmt = fmt
        m = {
            "shopify": 10**12, "square": 36**13, "stripe": 62**14, "clover": 36**13,
            "mollie": 62**10, "woo": 10**9, "uuid": 2**128, "email": 10**8,
        }.get(fmt)
        self.perm = _Perm(m, salt) if m else None
        self.salt = salt
        self.pad = _enc((salt >> 7) % 36**13, _B36, 13)

    def encode(self, i: int) -> str:
        f = self.fmt
        if f == "seq":
            return str(i + 1)
        k = self.perm.fwd(i)  # type: ignore[union-attr]
        if f == "shopify":
            return str(5_000_000_000_000 + k)
        if f == "woo":
            return str(7_000_000_000 + k)
        if f == "square":
            return _enc(k, _B36, 13) + self.pad
        if f == "clover":
            return _enc(k, _B36, 13)
        if f == "stripe":
            return "cus_" + _enc(k, _B62, 14)
        if f == "mollie":
            return "cst_" + _enc(k, _B62, 10)
        if f == "uuid":
            return str(uuid.UUID(int=k))
        if f == "email":
            return f"{FIRST_ASCII[i % len(FIRST_ASCII)]}.{k:08d}@example.com"
        raise AssertionError(f)

    def decode(self, cid: str) -> int | None:
        """Id -> index, or None when it can't be one of ours (caller re-encodes to verify)."""
        f = self.fmt
        k: int | None
        try:
            if f == "seq":
                return int(cid) - 1 if cid.isdigit() else None
            if f in ("shopify", "woo"):
                if not cid.isdigit():
                    return None
                k = int(cid) - (5_000_000_000_000 if f == "shopify" else 7_000_000_000)
            elif f == "square":
                k = _dec(cid[:13], _B36) if len(cid) == 26 else None
            elif f == "clover":
                k = _dec(cid, _B36) if len(cid) == 13 else None
            elif f == "stripe":
                k = _dec(cid[4:], _B62) if cid.startswith("cus_") and len(cid) == 18 else None
            elif f == "mollie":
                k = _dec(cid[4:], _B62) if cid.startswith("cst_") and len(cid) == 14 else None
            elif f == "uuid":
                k = uuid.UUID(cid).int
            elif f == "email":
                m = re.fullmatch(r"[a-z]+\.(\d{8})@example\.com", cid)
                k = int(m.group(1)) if m else None
            else:
                return None
        except ValueError:
            return None
        if k is None or not 0 <= k < self.perm.m:  # type: ignore[union-attr]
            return None
        return self.perm.back(k)  # type: ignore[union-attr]


FIRST_ASCII = ["amy", "bob", "fred", "zoe", "jose", "soren", "lukasz", "bjork", "aoife"]


def _ascii(s: str) -> str:
    return "".join(EMAIL_ASCII.get(c, c) for c in s.lower()).encode("ascii", "ignore").decode()


def _iso_z(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _shape(dt: datetime, r: random.Random, sentinel: bool = True) -> str:
    """One of the real date shapes for dt (naive UTC)."""
    x = r.random()
    if x < 0.35:
        return _iso_z(dt)
    if x < 0.60:
        return dt.strftime("%Y-%m-%dT%H:%M:%S")  # unqualified local
    if x < 0.72:
        off = r.choice([-5, -8, 1, 2, 5, 9])
        local = dt + timedelta(hours=off)
        return local.strftime("%Y-%m-%dT%H:%M:%S") + f"{'+' if off >= 0 else '-'}{abs(off):02d}:00"
    if x < 0.82:
        return dt.strftime("%Y-%m-%d")
    if x < 0.94 or not sentinel:
        return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{r.randrange(10**7):07d}Z"
    return "0001-01-01T00:00:00"


EPOCH = datetime(2020, 1, 1)


@dataclass
class Connection:
    company_id: str
    id: str
    platform: str
    status: str
    synced: bool
    json: dict[str, Any]
    store: CustomerStore | None = None

    @property
    def source_type(self) -> str:
        return PLATFORMS[self.platform][1]

    @property
    def serves_data(self) -> bool:
        return self.source_type == "Commerce" and self.status == "Linked" and self.synced


@dataclass
class Company:
    id: str
    json: dict[str, Any]
    connections: list[Connection] = field(default_factory=list)


#: Generated records kept per connection (about 1 KB each).
RECORD_CACHE_SIZE = 20_000


class CustomerStore:
    """Customers of one connection: generated base [0, n) + a small overlay of changes.

    Default order: front inserts (newest call first), base records by index (minus deleted),
    end inserts (oldest call first). Indexes >= n are inserted records.
    Not thread-safe by itself: the Sandbox serialises access with its lock.
    """

    def __init__(self, seed: int, conn_no: int, platform: str, n: int) -> None:
        self.platform = platform
        self.n = n
        h = hashlib.sha256(f"{seed}:{conn_no}:{platform}".encode()).digest()
        self.salt = int.from_bytes(h[:8], "big") << 40
        self.codec = IdCodec(PLATFORMS[platform][2], int.from_bytes(h[8:16], "big"))
        r = random.Random(self.salt)
        self.t0 = EPOCH + timedelta(days=r.randrange(0, 600), seconds=r.randrange(86400))
        self.batches = 1 + r.randrange(3, 12)
        self.front: list[int] = []
        self.end: list[int] = []
        self.extra_alive: set[int] = set()
        self.deleted: list[int] = []  # sorted base indexes
        self.deleted_set: set[int] = set()
        self.mods: dict[int, dict[str, Any]] = {}
        self.next_extra = n
        self.version = 0
        # Generated records are pure functions of the index: keep the recent ones, bounded, so
        # re-reads (benchmarks, repair passes) cost what a database read would, not a rebuild.
        self._cache: OrderedDict[int, dict[str, Any]] = OrderedDict()

    # -- generation ---------------------------------------------------------------------
    def last_sync(self) -> datetime:
        return self.t0 + timedelta(days=30 * self.batches, seconds=3)

    def generate(self, i: int) -> dict[str, Any]:
        r = random.Random(self.salt + i)
        p = self.platform
        first, last = r.choice(FIRST), r.choice(LAST)
        rec: dict[str, Any] = {"id": self.codec.encode(i)}
        name = f"{first} {last}"
        if p == "Clover" and r.random() < 0.6 or r.random() < 0.04:
            name = ""
        if p != "Square" or r.random() < 0.3:
            rec["customerName"] = name
        if not (p == "Clover" and r.random() < 0.5):
            rec["emailAddress"] = f"{_ascii(first)}.{_ascii(last)}{i}@example.com"
        x = r.random()
        if x < 0.1:
            rec["phone"] = None
        elif x < 0.2:
            rec["phone"] = ""
        elif x < 0.75:
            rec["phone"] = r.choice(PHONES)
        if p == "Stripe":
            rec["defaultCurrency"] = r.choice(["gbp", "usd", "eur"])
        elif p == "BigCommerce" or r.random() < 0.08:
            rec["defaultCurrency"] = "XXX"
        elif r.random() < 0.7:
            rec["defaultCurrency"] = r.choice(["GBP", "USD", "EUR", "PLN", "JPY"])
        if r.random() >= 0.08:
            addrs = []
            for _ in range(r.choice([0, 0, 1, 1, 1, 2, 3])):
                city, region, country, pc = r.choice(CITIES)
                if p == "Stripe":
                    typ = r.choice(["Billing", "Delivery"])
                elif p in ("Shopify", "Zettle", "BigCommerce", "PrestaShop", "Square"):
                    typ = "Unknown"
                else:
                    typ = r.choice(["billing", "delivery", "Billing", "Order", "Unknown"])
                a = {"type": typ, "line1": r.choice(LINE1)}
                if r.random() < 0.6:
                    a["line2"] = r.choice(["28 Easton St, Farringdon", "", "Engine Street"])
                a["city"] = city
                if r.random() < 0.8:
                    a["region"] = region
                if r.random() < 0.9:
                    a["country"] = country
                if r.random() < 0.9:
                    a["postalCode"] = pc
                addrs.append(a)
            rec["addresses"] = addrs
        if r.random() < 0.5:
            rec["note"] = r.choice(NOTES)
        created = self.t0 - timedelta(days=r.randrange(1, 900), seconds=r.randrange(86400))
        rec["createdDate"] = _shape(created, r)
        # modifiedDate: Codat's sync time, non-decreasing by index in batches
        batch = min(i * self.batches // max(self.n, 1), self.batches - 1)
        mdt = self.t0 + timedelta(days=30 * batch, seconds=batch)
        y = r.random()
        if y < 0.02:
            rec["modifiedDate"] = None
        elif y < 0.12:
            rec["modifiedDate"] = mdt.strftime("%Y-%m-%dT%H:%M:%S") + ".6464237Z"
        else:
            rec["modifiedDate"] = _iso_z(mdt)
        if p in ("Mollie", "Stripe") and r.random() < 0.7:
            pass  # these platforms often omit sourceModifiedDate
        elif r.random() < 0.05:
            rec["sourceModifiedDate"] = None
        else:
            smd = created + timedelta(seconds=r.randrange(0, 200 * 86400))
            rec["sourceModifiedDate"] = _shape(min(smd, mdt), r)
        return rec

    # -- state --------------------------------------------------------------------------
    def count(self) -> int:
        return len(self.front) + self.n - len(self.deleted) + len(self.end)

    def record(self, i: int) -> dict[str, Any]:
        cached = self._cache.get(i)
        if cached is None:
            cached = self._cache[i] = self.generate(i)
            if len(self._cache) > RECORD_CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(i)
        rec = dict(cached)  # shallow copy: overlays below replace keys, never mutate values
        mod = self.mods.get(i)
        if mod:
            rec.update(mod)
        return rec

    def alive(self, i: int) -> bool:
        if i < self.n:
            return i >= 0 and i not in self.deleted_set
        return i in self.extra_alive

    def find(self, cid: str) -> int | None:
        i = self.codec.decode(cid)
        if i is None or not self.alive(i) or self.codec.encode(i) != cid:
            return None
        return i

    def _base_at(self, p: int) -> int:
        """Base index of the p-th surviving base record."""
        d = self.deleted
        if not d:
            return p
        lo, hi = p, p + len(d)  # answer lies in [p, p + len(d)]
        while lo < hi:
            mid = (lo + hi) // 2
            if mid + 1 - bisect.bisect_left(d, mid + 1) > p:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def indexes(self, start: int = 0, stop: int | None = None) -> Iterator[int]:
        """Indexes in default order, positions [start, stop) - O(stop - start + log)."""
        total = self.count()
        stop = total if stop is None else min(stop, total)
        pos = start
        nf = len(self.front)
        while pos < stop and pos < nf:
            yield self.front[pos]
            pos += 1
        nb = self.n - len(self.deleted)
        if pos < stop and pos < nf + nb:
            i = self._base_at(pos - nf)
            while pos < stop and pos < nf + nb:
                if i not in self.deleted_set:
                    yield i
                    pos += 1
                i += 1
        while pos < stop:
            yield self.end[pos - nf - nb]
            pos += 1

    def insert(self, k: int, at: str, stamp: str) -> list[int]:
        new = list(range(self.next_extra, self.next_extra + k))
        self.next_extra += k
        for i in new:
            self.mods[i] = {"modifiedDate": stamp, "sourceModifiedDate": stamp,
                            "createdDate": stamp}
            self.extra_alive.add(i)
        if at == "front":
            self.front[:0] = new
        elif at == "end":
            self.end.extend(new)
        else:
            raise ValueError("at must be 'front' or 'end'")
        self.version += 1
        return new

    def delete(self, i: int) -> None:
        if i < self.n:
            if i not in self.deleted_set:
                self.deleted_set.add(i)
                bisect.insort(self.deleted, i)
        else:
            self.extra_alive.discard(i)
            if i in self.front:
                self.front.remove(i)
            if i in self.end:
                self.end.remove(i)
        self.version += 1

    def modify(self, i: int, stamp: str, changes: dict[str, Any] | None) -> None:
        mod = self.mods.setdefault(i, {})
        mod.update({"modifiedDate": stamp, "sourceModifiedDate": stamp})
        if changes:
            mod.update(changes)
        self.version += 1


def _uuid(r: random.Random) -> str:
    return str(uuid.UUID(int=r.getrandbits(128), version=4))


def build_companies(
    seed: int, companies: int | None, customers: Any
) -> list[Company]:
    """The default world: ``companies`` companies (default 6) following DEFAULT_LAYOUT."""
    r = random.Random(f"codat-frames-sandbox:{seed}")
    n_comp = 6 if companies is None else int(companies)
    names = COMPANY_NAMES[:]
    r.shuffle(names)
    out: list[Company] = []
    conn_no = 0
    for ci in range(n_comp):
        cid = _uuid(r)
        if ci < len(DEFAULT_LAYOUT):
            layout = DEFAULT_LAYOUT[ci]
        else:
            layout = [(r.choice(COMMERCE_PLATFORMS), "Linked", True)]
            if r.random() < 0.5:
                layout.append((r.choice(OTHER_PLATFORMS), r.choice(["Linked", "PendingAuth"]),
                               True))
        name = names[ci % len(names)] + ("" if ci < len(names) else f" {ci // len(names) + 1}")
        created = EPOCH + timedelta(days=r.randrange(0, 400), seconds=r.randrange(86400))
        comp = Company(cid, {})
        last_syncs = []
        for platform, status, synced in layout:
            kid = _uuid(r)
            key, stype, _ = PLATFORMS[platform]
            c_created = created + timedelta(days=r.randrange(0, 30), seconds=r.randrange(86400))
            cj: dict[str, Any] = {
                "id": kid,
                "integrationId": _uuid(r),
                "integrationKey": key,
                "sourceId": _uuid(r),
                "platformName": platform,
                "linkUrl": f"https://link-api.codat.io/companies/{cid}/connections/{kid}/start",
                "status": status,
                "lastSync": None,
                "created": _iso_z(c_created),
                "sourceType": stype,
            }
            conn = Connection(cid, kid, platform, status, synced, cj)
            if stype == "Commerce":
                if isinstance(customers, Mapping):
                    n = customers.get(kid, customers.get(platform))
                else:
                    n = customers
                if n is None:
                    n = 120 + random.Random(f"{seed}:{conn_no}:volume").randrange(360)
                conn.store = CustomerStore(seed, conn_no, platform, int(n) if synced else 0)
                if synced:
                    ls = conn.store.last_sync()
                    cj["lastSync"] = ls.strftime("%Y-%m-%dT%H:%M:%S") + ".6464237Z"
                    last_syncs.append(ls)
            elif status == "Linked":
                ls = c_created + timedelta(days=r.randrange(1, 300))
                cj["lastSync"] = _iso_z(ls)
                last_syncs.append(ls)
            if status == "Deauthorized":
                cj["dataConnectionErrors"] = [{
                    "statusCode": "401",
                    "statusText": "Unauthorized",
                    "errorMessage": "The access token has been revoked.",
                    "erroredOnUtc": _iso_z(c_created + timedelta(days=40)),
                    "status": "Active",
                    "resolvedOnUtc": None,
                }]
            conn_no += 1
            comp.connections.append(conn)
        comp.json = {
            "id": cid,
            "name": name,
            "description": f"{name} - sandbox company",
            "platform": "",
            "redirect": f"https://link.codat.io/company/{cid}",
            "lastSync": _iso_z(max(last_syncs)) if last_syncs else None,
            "created": _iso_z(created),
            "createdByUserName": r.choice(["Mike Smith", "Joe Bloggs", "Dan Tzabar", "Zoë Ng"]),
            "products": ["commerce", "lending"] if ci % 2 == 0 else ["commerce"],
            "tags": {"region": r.choice(["uk", "us", "eu"]), "uid": f"cust-{ci:04d}"},
            "referenceSubsidiaryCompanies": [],
        }
        out.append(comp)
    return out


def sandbox_epoch_after(companies: list[Company]) -> datetime:
    """Start of the sandbox clock: after every generated date."""
    latest = datetime(2024, 1, 1)
    for comp in companies:
        for conn in comp.connections:
            if conn.store is not None:
                latest = max(latest, conn.store.last_sync() + timedelta(days=1))
    return latest.replace(tzinfo=UTC)
