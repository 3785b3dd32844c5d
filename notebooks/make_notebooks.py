"""Generate the example notebooks (stored without outputs).

    .venv/bin/python notebooks/make_notebooks.py

Edit the cells here, not in the .ipynb files, so the notebooks stay reviewable and output-free.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}

NB01 = [
    new_markdown_cell(
        """# Explore a connection's customers

Pick a company and one of its commerce connections, load every customer into pandas, then look
at the data: new customers per month, countries, currencies and data quality, and finally
export to parquet and query it with DuckDB.

**API key.** With `CODAT_API_KEY` set in the environment this notebook talks to Codat. Without
it, it starts the embedded **sandbox** (a local Codat-like server on 127.0.0.1 with made-up
data), so it runs anywhere with no key and no network. The key is never printed or stored in
the notebook. (To type a key instead, use `codat_frames.widgets.connect()`.)"""
    ),
    new_code_cell(
        """import tempfile

import duckdb
import matplotlib.pyplot as plt
import pandas as pd

from codat_frames.parquet import read_parquet, to_parquet
from codat_frames.widgets import CompanyConnectionPicker, sandbox_or_key

s = sandbox_or_key()"""
    ),
    new_markdown_cell(
        """## Choose a company and a connection

Type in the search box to narrow the list, choose a company, then a connection (commerce
first; ones that can't serve customers say why), and click **Load customers**."""
    ),
    new_code_cell(
        """picker = CompanyConnectionPicker(s)
picker"""
    ),
    new_markdown_cell(
        """The next cell uses what you loaded above. If nothing was loaded yet (for example when
running all cells at once), it loads the chosen connection, or else the first commerce
connection that can serve data."""
    ),
    new_code_cell(
        """frames = picker.ensure_loaded()
assert frames is not None, picker.error
customers, addresses = frames.customers, frames.addresses
print(f"{picker.company_id} {picker.connection_id}: {len(customers):,} customers, "
      f"{len(addresses):,} addresses")
customers.head()"""
    ),
    new_markdown_cell("## New customers per month (by `created_date`)"),
    new_code_cell(
        """created = customers["created_date"].dropna().dt.tz_convert(None)
months = created.dt.to_period("M")
per_month = months.value_counts().reindex(
    pd.period_range(months.min(), months.max(), freq="M"), fill_value=0
)
fig, ax = plt.subplots(figsize=(10, 3))
ax.bar(per_month.index.to_timestamp(), per_month.to_numpy(), width=25, color="#3b6ea5")
ax.set_title(f"New customers per month ({len(created):,} with a created date)")
ax.set_xlabel("month created")
ax.set_ylabel("customers")
fig.autofmt_xdate()
plt.show()
per_month.tail(6).to_frame("new customers")"""
    ),
    new_markdown_cell(
        "## Customers by country\n\nA customer counts once per country among its addresses."
    ),
    new_code_cell(
        """by_country = (
    addresses.dropna(subset=["country"])
    .drop_duplicates(["customer_id", "country"])["country"]
    .value_counts()
)
ax = by_country.sort_values().plot(kind="barh", figsize=(6, 3), color="#5a9367",
                                   title="Customers by country")
ax.set_xlabel("customers")
plt.tight_layout()
plt.show()
by_country.to_frame("customers")"""
    ),
    new_markdown_cell(
        "## Currency mix\n\n`XXX` is Codat's code for *no currency*; missing means the "
        "platform sent none."
    ),
    new_code_cell(
        """currency = customers["default_currency"].fillna("(missing)").value_counts()
ax = currency.plot(kind="pie", figsize=(4, 4), autopct="%1.0f%%", title="Default currency")
ax.set_ylabel("")
plt.show()
currency.to_frame("customers")"""
    ),
    new_markdown_cell(
        """## Data quality

Empty strings and nulls both count as missing. `0001-01-01` is Codat's "no date" sentinel:
like nulls it is read as `NaT`."""
    ),
    new_code_cell(
        """def missing(col):
    return int((customers[col].isna() | (customers[col] == "")).sum())

per_customer = addresses.groupby("customer_id", observed=True).size()
per_customer = per_customer.reindex(customers["id"], fill_value=0)
n = len(customers)
quality = pd.DataFrame(
    [
        ("missing customer name", missing("customer_name")),
        ("missing email", missing("email_address")),
        ("missing phone", missing("phone")),
        ("missing or sentinel created_date", int(customers["created_date"].isna().sum())),
        ("missing or sentinel modified_date", int(customers["modified_date"].isna().sum())),
        ("currency XXX or missing",
         int(customers["default_currency"].isna().sum()
             + (customers["default_currency"].str.upper() == "XXX").sum())),
        ("no address", int((per_customer == 0).sum())),
        ("more than one address", int((per_customer > 1).sum())),
    ],
    columns=["check", "customers"],
)
quality["share"] = (quality["customers"] / max(n, 1)).map("{:.1%}".format)
print(f"addresses per customer: mean {per_customer.mean():.2f}, max {per_customer.max()}")
quality"""
    ),
    new_markdown_cell(
        """## Parquet and DuckDB

The folder holds two Hive-partitioned datasets, `customers/` and `addresses/`, readable by
pyarrow, DuckDB, Polars and Spark. Here it is a temporary folder."""
    ),
    new_code_cell(
        """out = tempfile.mkdtemp(prefix="codat-frames-")
to_parquet(frames, out)
back = read_parquet(out)
assert len(back.customers) == len(customers)
print(f"wrote {len(back.customers):,} customers and {len(back.addresses):,} addresses "
      f"to {out}")"""
    ),
    new_code_cell(
        """con = duckdb.connect()
con.sql(f\"\"\"
    SELECT coalesce(upper(c.default_currency), '(missing)') AS currency,
           count(DISTINCT c.id) AS customers,
           count(a.customer_id) AS addresses
    FROM read_parquet('{out}/customers/**/*.parquet', hive_partitioning = true) AS c
    LEFT JOIN read_parquet('{out}/addresses/**/*.parquet', hive_partitioning = true) AS a
      ON a.connection_id = c.connection_id AND a.customer_id = c.id
    GROUP BY 1
    ORDER BY customers DESC
\"\"\").df()"""
    ),
    new_code_cell(
        """total = con.execute(
    f"SELECT count(*) FROM read_parquet('{out}/customers/**/*.parquet', "
    "hive_partitioning = true)"
).fetchone()[0]
print(f"Done: DuckDB counts {total:,} customers in the parquet export.")"""
    ),
]

NB02 = [
    new_markdown_cell(
        """# Portfolio: every commerce connection into one parquet dataset

Reads the customers of every commerce connection of every company that can serve data, skips
the others with the reason, and writes everything to one parquet folder (partitioned by
company and connection). Without `CODAT_API_KEY` it runs against the embedded sandbox."""
    ),
    new_code_cell(
        """import tempfile

import duckdb
import pandas as pd

from codat_frames import CodatError
from codat_frames.paging import read_customers
from codat_frames.parquet import read_parquet, to_parquet
from codat_frames.widgets import connection_reason, describe_error, sandbox_or_key

pd.set_option("display.max_colwidth", None)  # show the skip reasons in full
s = sandbox_or_key()
out = tempfile.mkdtemp(prefix="codat-portfolio-")"""
    ),
    new_code_cell(
        """rows = []
for company in s.companies.iter_all():
    for conn in s.connections.iter_all(company.id):
        row = {
            "company": company.name,
            "platform": conn.platform_name,
            "source_type": conn.source_type,
            "status": conn.status,
            "company_id": company.id,
            "connection_id": conn.id,
        }
        reason = connection_reason(conn)
        if reason is not None:
            rows.append({**row, "outcome": "skipped", "reason": reason})
            continue
        try:
            frames = read_customers(s, company.id, conn.id, progress=False)
        except CodatError as e:
            rows.append({**row, "outcome": "skipped", "reason": describe_error(e)})
            continue
        to_parquet(frames, out)
        rows.append({**row, "outcome": "loaded", "customers": len(frames.customers),
                     "addresses": len(frames.addresses), "seconds": frames.meta.get("seconds"),
                     "reason": ""})

summary = pd.DataFrame(rows)
summary["customers"] = summary.get("customers", pd.Series(dtype=float)).astype("Int64")
summary["addresses"] = summary.get("addresses", pd.Series(dtype=float)).astype("Int64")
loaded = summary[summary["outcome"] == "loaded"]
print(f"{len(loaded)} connections loaded, {len(summary) - len(loaded)} skipped, "
      f"{int(loaded['customers'].sum()):,} customers written to {out}")
summary[["company", "platform", "status", "outcome", "customers", "addresses", "reason"]]"""
    ),
    new_markdown_cell("## Read the dataset back"),
    new_code_cell(
        """everything = read_parquet(out)
assert len(everything.customers) == int(loaded["customers"].sum())
check = (
    everything.customers.groupby("connection_id", observed=True).size()
    .rename("in_parquet").reset_index()
    .merge(loaded[["connection_id", "company", "platform", "customers"]], on="connection_id")
)
assert (check["in_parquet"] == check["customers"]).all()
check"""
    ),
    new_code_cell(
        """con = duckdb.connect()
con.register("summary", summary[["connection_id", "company", "platform"]])
con.sql(f\"\"\"
    SELECT s.company, s.platform, count(*) AS customers,
           count(c.email_address) FILTER (WHERE c.email_address <> '') AS with_email,
           min(c.created_date) AS first_created, max(c.modified_date) AS last_modified
    FROM read_parquet('{out}/customers/**/*.parquet', hive_partitioning = true) AS c
    JOIN summary AS s USING (connection_id)
    GROUP BY ALL
    ORDER BY customers DESC
\"\"\").df()"""
    ),
]


def build(cells: list) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    # Deterministic cell ids keep regenerated files diff-free.
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
    nbformat.validate(nb)
    return nb


def main() -> None:
    for name, cells in (
        ("01_explore_customers.ipynb", NB01),
        ("02_portfolio.ipynb", NB02),
    ):
        path = HERE / name
        nbformat.write(build(cells), path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
