"""`index.html`: the evidence package as a page people would rather look at than read.

One self-contained file: no script, no font, style or image from anywhere else (a Content
Security Policy says so to the browser too), so it opens from file:// on an air-gapped
workstation and prints. Charts are inline SVG drawn here, each with a text alternative and the
same numbers in a table beside it. Every number is a link to the package file it was counted
from (`<a class="num" data-metric=...>`), so an assessor can check any of them.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from enclave.canonical import format_time
from enclave.evidence.facts import CATEGORIES, SERIES, STATUSES

STATUS_LABEL = {
    "open": "Open",
    "not_a_finding": "Not a finding",
    "not_applicable": "Not applicable",
    "not_reviewed": "Not reviewed",
}
CATEGORY_LABEL = {"CAT I": "CAT I (high)", "CAT II": "CAT II (medium)", "CAT III": "CAT III (low)"}
# Colours with at least 4.5:1 contrast against white (text) and against each other's labels.
COLOUR = {
    "open": "#a40e26",
    "not_a_finding": "#1e6b34",
    "not_applicable": "#5a6470",
    "not_reviewed": "#8a5a00",
    "allowed": "#1e6b34",
    "refused": "#a40e26",
    "held": "#8a5a00",
    "approved": "#1f5fa8",
    "denied": "#6b2d8f",
    "expired": "#5a6470",
    "withheld": "#00707a",
    "admitted": "#1e6b34",
}
CSS = """
:root { color: #1a1a1a; background: #fff; }
body { font-family: system-ui, "Segoe UI", "Liberation Sans", "DejaVu Sans", Arial, sans-serif;
       margin: 0 auto; max-width: 72rem; padding: 1rem 1.5rem 3rem; line-height: 1.45; }
h1 { font-size: 1.8rem; margin: 0.5rem 0; }
h2 { font-size: 1.35rem; border-bottom: 2px solid #1a1a1a; padding-bottom: 0.2rem; margin-top: 2.2rem; }
h3 { font-size: 1.1rem; margin-top: 1.6rem; }
a { color: #0b4f9c; }
a.num { font-variant-numeric: tabular-nums; font-weight: 600; }
code { font-family: "DejaVu Sans Mono", "Liberation Mono", monospace; font-size: 0.9em;
       overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: 0.6rem 0 1rem; width: 100%; }
caption { text-align: left; font-weight: 600; padding: 0.3rem 0; }
th, td { border: 1px solid #8c8c8c; padding: 0.3rem 0.5rem; text-align: left; vertical-align: top; }
thead th { background: #e8ecf1; }
td.n, th.n { text-align: right; }
.tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(11rem, 1fr)); gap: 0.6rem;
         margin: 0; }
.tiles div { border: 1px solid #8c8c8c; border-radius: 4px; padding: 0.5rem 0.7rem; }
.tiles dt { font-size: 0.9rem; }
.tiles dd { margin: 0; font-size: 1.6rem; }
.bad { color: #a40e26; font-weight: 700; }
.good { color: #1e6b34; font-weight: 700; }
.legend { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 0.4rem 1.2rem;
          margin: 0.3rem 0; }
.legend li::before { content: ""; display: inline-block; width: 0.9rem; height: 0.9rem;
                     margin-right: 0.35rem; vertical-align: -0.1rem; background: var(--c); }
figure { margin: 0.5rem 0; }
figcaption { font-size: 0.9rem; color: #333; }
svg { max-width: 100%; height: auto; }
svg text { font-size: 12px; fill: #1a1a1a; }
nav ul { columns: 2; padding-left: 1.2rem; }
.muted { color: #4a4a4a; }
@media print {
  nav { display: none; }
  body { max-width: none; padding: 0; }
  a { color: inherit; text-decoration: none; }
  h2, h3 { break-after: avoid; }
  tr, figure { break-inside: avoid; }
  thead { display: table-header-group; }
}
@page { margin: 1.5cm; }
"""


def _open(ident: str, title: str) -> str:
    """The start of a section with its heading (the section is labelled by it)."""
    return f'<section id="{ident}" aria-labelledby="h-{ident}"><h2 id="h-{ident}">{_e(title)}</h2>'


def _e(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def num(value: int, href: str | None, metric: str) -> str:
    """A number, linked to the file it comes from."""
    if href is None:
        return f'<span class="num" data-metric="{_e(metric)}">{int(value)}</span>'
    return f'<a class="num" href="{_e(quote(href))}" data-metric="{_e(metric)}">{int(value)}</a>'


def link(href: str, text: str) -> str:
    return f'<a href="{_e(quote(href))}">{_e(text)}</a>'


def _time(text: str | None) -> str:
    if not text:
        return "-"
    return f'<time datetime="{_e(text)}">{_e(text[:19].replace("T", " "))} UTC</time>'


def _key(keyid: str | None) -> str:
    return f'<code title="{_e(keyid)}">{_e((keyid or "-")[:16])}</code>' if keyid else "-"


def _table(
    caption: str, head: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[int] = ()
) -> str:
    """A table; `rows` cells are HTML already; the first cell of each row is its header."""
    out = [f"<table><caption>{caption}</caption><thead><tr>"]
    out += [f'<th scope="col"{" class=n" if i in numeric else ""}>{_e(h)}</th>' for i, h in enumerate(head)]
    out.append("</tr></thead><tbody>")
    count = 0
    for row in rows:
        count += 1
        cells = [f'<th scope="row">{row[0]}</th>']
        cells += [f"<td{' class=n' if i in numeric else ''}>{c}</td>" for i, c in enumerate(row) if i > 0]
        out.append("<tr>" + "".join(cells) + "</tr>")
    if not count:
        out.append(f'<tr><td colspan="{len(head)}" class="muted">none</td></tr>')
    out.append("</tbody></table>")
    return "".join(out)


def _legend(keys: Sequence[str], labels: dict[str, str]) -> str:
    items = "".join(f'<li style="--c:{COLOUR[k]}">{_e(labels.get(k, k))}</li>' for k in keys)
    return f'<ul class="legend" aria-hidden="true">{items}</ul>'


# -- charts -----------------------------------------------------------------------------------------
def _svg(ident: str, title: str, desc: str, width: int, height: int, body: str) -> str:
    return (
        f'<svg role="img" aria-labelledby="{ident}-t {ident}-d" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}"><title id="{ident}-t">{_e(title)}</title>'
        f'<desc id="{ident}-d">{_e(desc)}</desc>{body}</svg>'
    )


def host_chart(ident: str, host: str, counts: dict[str, dict[str, int]]) -> str:
    """One horizontal bar per category, split by status, on a common scale."""
    width, label, row = 640, 120, 30
    scale = max(1, *(sum(c.values()) for c in counts.values()))
    body = []
    for index, category in enumerate(CATEGORIES):
        y = 8 + index * row
        body.append(f'<text x="0" y="{y + 15}">{_e(CATEGORY_LABEL[category])}</text>')
        x = float(label)
        for status in STATUSES:
            value = counts[category].get(status, 0)
            if not value:
                continue
            w = (width - label - 10) * value / scale
            body.append(
                f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="20" fill="{COLOUR[status]}">'
                f"<title>{_e(category)} {_e(STATUS_LABEL[status])}: {value}</title></rect>"
            )
            x += w
    desc = "; ".join(
        f"{c}: " + ", ".join(f"{counts[c].get(s, 0)} {STATUS_LABEL[s].lower()}" for s in STATUSES)
        for c in CATEGORIES
    )
    return _svg(ident, f"Controls on {host} by category and status", desc, width, 8 + 3 * row, "".join(body))


def timeline_chart(ident: str, events: Sequence[dict[str, Any]]) -> str:
    """Bundle verifications on a time axis: admitted above the line, refused below."""
    if not events:
        return ""
    width, height, left, right = 640, 110, 10, 10
    moments = [_parse(e["time"]) for e in events]
    start, end = min(moments), max(moments)
    span = max((end - start).total_seconds(), 1.0)
    body = [f'<line x1="{left}" y1="55" x2="{width - right}" y2="55" stroke="#1a1a1a"/>']
    for event, moment in zip(events, moments, strict=True):
        x = left + (width - left - right) * (moment - start).total_seconds() / span
        name = f"{event.get('name') or 'unknown bundle'} {event.get('version') or ''}".strip()
        if event["result"] == "verified":
            body.append(
                f'<circle cx="{x:.1f}" cy="35" r="7" fill="{COLOUR["admitted"]}">'
                f"<title>{_e(event['time'])} admitted {_e(name)}</title></circle>"
            )
        else:
            body.append(
                f'<path d="M{x - 6:.1f} 69 l12 12 m0 -12 l-12 12" stroke="{COLOUR["refused"]}" '
                'stroke-width="3">'
                f"<title>{_e(event['time'])} refused {_e(name)}</title></path>"
            )
    body.append(f'<text x="{left}" y="105">{_e(format_time(start))}</text>')
    body.append(f'<text x="{width - right}" y="105" text-anchor="end">{_e(format_time(end))}</text>')
    admitted = sum(1 for e in events if e["result"] == "verified")
    desc = f"{admitted} admitted (circles above the line), {len(events) - admitted} refused (crosses below)"
    return _svg(ident, "Bundle verifications over time", desc, width, height, "".join(body))


def decisions_chart(ident: str, timeline: dict[str, Any]) -> str:
    """Stacked columns of gateway decisions per time bucket."""
    buckets = timeline["buckets"]
    if not buckets:
        return ""
    width, height, bottom = 640, 180, 20
    top = max(1, *(sum(b["counts"].values()) for b in buckets))
    step = min((width - 20) / len(buckets), 48.0)
    body = [
        f'<line x1="10" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" stroke="#1a1a1a"/>'
    ]
    for index, bucket in enumerate(buckets):
        x = 10 + index * step
        y = float(height - bottom)
        for series in SERIES:
            value = bucket["counts"][series]
            if not value:
                continue
            h = (height - bottom - 10) * value / top
            y -= h
            body.append(
                f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(step - 2, 1):.1f}" height="{h:.1f}" '
                f'fill="{COLOUR[series]}"><title>{_e(bucket["start"])}: {value} {series}</title></rect>'
            )
    body.append(f'<text x="10" y="{height - 4}">{_e(buckets[0]["start"])}</text>')
    if len(buckets) > 1:
        end = 10 + len(buckets) * step
        body.append(
            f'<text x="{end:.1f}" y="{height - 4}" text-anchor="end">{_e(buckets[-1]["start"])}</text>'
        )
    minutes = timeline["bucketSeconds"] // 60
    desc = f"Decisions per {minutes}-minute interval, stacked by kind: " + ", ".join(SERIES)
    return _svg(ident, "Gateway decisions over time", desc, width, height, "".join(body))


def _parse(text: str) -> datetime:
    return datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)


# -- sections ---------------------------------------------------------------------------------------
def _tiles(s: dict[str, Any]) -> str:
    totals = s["totals"]
    # A total over several files links to summary.json, which gives each file's share.
    checklists = [h["checklist"]["effective"] for h in s["hosts"] if h["checklist"]]
    findings = checklists[0] if len(checklists) == 1 else "summary.json"
    receipts = s["bundles"]["source"]
    logs = s["gateways"][0]["records"] if len(s["gateways"]) == 1 else "summary.json"
    verified = totals["auditLogsVerified"]
    items = [
        ("Hosts", num(totals["hosts"], "summary.json", "total:hosts")),
        *(
            (f"Open {c} findings", num(totals["openFindings"][c], findings, f"total:open:{c}"))
            for c in CATEGORIES
        ),
        ("Bundles admitted", num(totals["admitted"], receipts, "total:admitted")),
        ("Bundles refused", num(totals["refused"], receipts, "total:refused")),
        ("Gateway decisions", num(totals["decisions"], logs, "total:decisions")),
        ("Held requests", num(totals["held"], logs, "total:held")),
        ("POA&M rows", num(s["poam"]["rows"], "poam.csv", "total:poam")),
        (
            "Audit logs",
            '<span class="good">verified</span>' if verified else '<span class="bad">FAILED</span>',
        ),
    ]
    cells = "".join(f"<div><dt>{_e(t)}</dt><dd>{v}</dd></div>" for t, v in items)
    return f'{_open("summary", "At a glance")}<dl class="tiles">{cells}</dl></section>'


def _hosts(s: dict[str, Any]) -> str:
    out = [
        _open("hosts", "Hosts: STIG controls by category"),
        "<p>Worst first: the host with the most open CAT I findings leads. CAT I, II and III are the DISA "
        "severity categories high, medium and low.</p>",
        _legend(STATUSES, STATUS_LABEL),
    ]
    for index, host in enumerate(s["hosts"]):
        name = host["host"]
        out.append(f'<h3 id="host-{index}">{_e(name)}</h3>')
        run = host["run"]
        if run:
            state = _e(run["result"]) + (f": {_e(run['reason'])}" if run.get("reason") else "")
            out.append(
                f"<p>Provisioning {_e(run['mode'])} of {_e(run['bundle'])} at {_time(run['started'])}: "
                f"{state} ({link(run['report'], 'run report')}).</p>"
            )
        checklist = host["checklist"]
        if checklist is None:
            out.append('<p class="muted">No checklist for this host in the package.</p>')
            continue
        source = checklist["effective"]
        attested = (
            f" with attestations merged (as provisioned: {link(checklist['source'], checklist['source'])})"
            if checklist["attested"]
            else ""
        )
        out.append(f"<p>Checklist: {link(source, source)}{attested}.</p>")
        out.append(f"<figure>{host_chart(f'chart-host-{index}', name, checklist['counts'])}</figure>")
        rows = []
        for category in CATEGORIES:
            counts = checklist["counts"][category]
            cells = [num(counts.get(st, 0), source, f"host:{name}:{category}:{st}") for st in STATUSES]
            rows.append([_e(CATEGORY_LABEL[category]), *cells])
        out.append(
            _table(
                f"Controls on {_e(name)} by category and status",
                ["Category", *(STATUS_LABEL[st] for st in STATUSES)],
                rows,
                numeric=(1, 2, 3, 4),
            )
        )
        findings = [
            [
                _e(f["category"]),
                f"<code>{_e(f['id'])}</code>",
                _e(f["title"]),
                ("<strong>Attested.</strong> " if f["attested"] else "") + _e(f["details"]),
            ]
            for f in checklist["open"]
        ]
        out.append(
            _table(
                f"Open findings on {_e(name)}, worst first",
                ["Category", "Control", "Title", "Details"],
                findings,
            )
        )
    if not s["hosts"]:
        out.append('<p class="muted">No provisioning report or checklist in the package.</p>')
    out.append("</section>")
    return "".join(out)


def _bundles(s: dict[str, Any]) -> str:
    bundles = s["bundles"]
    source = bundles["source"]
    out = [_open("bundles", "Bundles admitted and refused")]
    if source is None:
        out.append(
            '<p class="muted">No receipt log in the package (no state directory was read).</p></section>'
        )
        return "".join(out)
    out.append(
        f"<p>From the verification receipts ({link(source, source)}): "
        f"{num(bundles['admitted'], source, 'bundles:admitted')} admitted, "
        f"{num(bundles['refused'], source, 'bundles:refused')} refused, "
        f"{num(bundles['rechecked'], source, 'bundles:rechecked')} audit re-checks.</p>"
    )
    chart = timeline_chart("chart-bundles", bundles["events"])
    if chart:
        out.append(f"<figure>{chart}{_legend(['admitted', 'refused'], {})}</figure>")
    rows = []
    for event in bundles["events"]:
        name = f"{event.get('name') or '(unverified)'} {event.get('version') or ''}".strip()
        if event["result"] == "verified":
            result = '<span class="good">admitted</span>' if event["mode"] == "admission" else "re-checked"
        else:
            code = num(event["exitCode"] or 0, source, f"receipt:{event['seq']}:exit")
            result = f'<span class="bad">refused</span> (exit {code}): {_e(event["error"])}'
        signers = ", ".join(
            f"{_key(x['keyid'])} {_e(x['scheme'])}" for x in event["signers"]
        ) or "claimed: " + (", ".join(_key(k) for k in event["claimed"]) or "none")
        rows.append(
            [
                _time(event["time"]),
                _e(name)
                + (f"<br><span class=muted>{_e(', '.join(event['files']))}</span>" if event["files"] else ""),
                result,
                signers,
                num(event["seq"], source, f"receipt:{event['seq']}:seq"),
            ]
        )
    out.append(
        _table("Every verification in the window", ["Time", "Bundle", "Result", "Signers", "Receipt"], rows)
    )
    srows = []
    for statement in s["statements"]:
        docs = statement["documents"]
        sig = statement["signatures"]
        srows.append(
            [
                _e(f"{statement['name']} {statement['version']}"),
                link(statement["statement"], "statement"),
                ('<span class="good">valid</span>' if sig["met"] else '<span class="bad">NOT MET</span>')
                + f" under root v{num(sig['trustRoot'], s['trustRoot']['source'], 'root:version')}: "
                + f"{_e(sig['explain'])}; "
                + ", ".join(f"{_key(x['keyid'])} {_e(x['scheme'])}" for x in sig["signers"]),
                " ".join(link(p, kind) for kind, paths in sorted(docs.items()) for p in paths) or "-",
            ]
        )
    out.append(
        _table(
            "Admitted bundles: signed statements and documents",
            ["Bundle", "Statement", "Signatures", "SBOM, provenance, guard model cards"],
            srows,
        )
    )
    out.append("</section>")
    return "".join(out)


def _gateway(s: dict[str, Any]) -> str:
    out = [_open("gateway", "Gateway decisions")]
    if not s["gateways"]:
        out.append('<p class="muted">No audit log in the package.</p>')
    for index, gateway in enumerate(s["gateways"]):
        records = gateway["records"]
        out.append(f"<h3>{_e(gateway['dir'])} <span class=muted>(from {_e(gateway['log'])})</span></h3>")
        totals = gateway["totals"]
        if not any(totals.values()):
            out.append(
                f"<p>No gateway decisions in {link(records, records)} (a monitoring agent's log?).</p>"
            )
        else:
            chart = decisions_chart(f"chart-gw-{index}", gateway["timeline"])
            out.append(f"<figure>{chart}{_legend(SERIES, {})}</figure>")
            rows = [[_e(series), num(totals[series], records, f"gw:{index}:{series}")] for series in SERIES]
            rows += [
                [_e(detail), num(count, records, f"gw:{index}:detail:{detail}")]
                for detail, count in gateway["details"].items()
                if detail.startswith("refused by")
            ]
            out.append(_table("Decisions by kind", ["Decision", "Count"], rows, numeric=(1,)))
            rule_rows = [
                [
                    f"<code>{_e(rule)}</code>",
                    *(num(c[x], records, f"gw:{index}:rule:{rule}:{x}") for x in SERIES),
                ]
                for rule, c in gateway["byRule"].items()
            ]
            out.append(
                _table(
                    "Decisions per rule",
                    ["Rule", *SERIES],
                    rule_rows,
                    numeric=tuple(range(1, len(SERIES) + 1)),
                )
            )
        if gateway["checks"]:
            verification = gateway["verificationFile"]
            check_rows = [
                [
                    _e(check),
                    ", ".join(
                        f"{_e(result)} {num(n, verification, f'agent:{index}:{check}:{result}')}"
                        for result, n in sorted(results.items())
                    ),
                ]
                for check, results in sorted(gateway["checks"].items())
            ]
            out.append(_table("Monitoring agent checks", ["Check", "Results"], check_rows))
    out.append("</section>")
    return "".join(out)


def _held(s: dict[str, Any]) -> str:
    out = [
        '<section id="held" aria-labelledby="h-held"><h2 id="h-held">Held requests and their approvers</h2>'
    ]
    any_held = False
    for index, gateway in enumerate(s["gateways"]):
        records = gateway["records"]
        rows = []
        for held in gateway["held"]:
            any_held = True
            approvals = (
                "<br>".join(
                    f"{_key(a['approver'])} {_e(a['decision'])}, signed {_time(a['signedTime'])}, "
                    f"recorded {_time(a['recordedTime'])}"
                    for a in held["approvals"]
                )
                or "none"
            )
            outcome = _e(held["outcome"])
            if held["resolvedAt"]:
                outcome += f" at {_time(held['resolvedAt'])}"
            rows.append(
                [
                    f"<code>{_e(held['id'])}</code>",
                    f"<code>{_e(held['rule'])}</code>",
                    _key(held["requester"]),
                    _time(held["heldAt"]),
                    outcome,
                    approvals,
                ]
            )
        if rows:
            caption = f"Held in {_e(gateway['dir'])}: {num(len(rows), records, f'held:{index}')} requests"
            out.append(
                _table(caption, ["Request", "Rule", "Requester", "Held at", "Outcome", "Approvals"], rows)
            )
    if not any_held:
        out.append('<p class="muted">No held request in the package.</p>')
    out.append("</section>")
    return "".join(out)


def _audit(s: dict[str, Any]) -> str:
    out = [_open("audit", "Audit logs and receipts")]
    for index, gateway in enumerate(s["gateways"]):
        v = gateway["verification"]
        source, checkpoints = gateway["verificationFile"], gateway["checkpointsFile"]
        verdict = (
            '<span class="good">verified</span>'
            if v["ok"]
            else '<span class="bad">FAILED verification</span>'
        )
        out.append(f"<h3>{_e(gateway['log'])}</h3>")
        out.append(
            f"<p>{verdict} ({link(source, source)}): "
            f"{num(v['records'] or 0, source, f'audit:{index}:records')} records, "
            f"{num(v['verified_checkpoints'] or 0, checkpoints, f'audit:{index}:checkpoints')} "
            f"signed checkpoints, {num(v['unproven_records'] or 0, source, f'audit:{index}:unproven')} "
            "records after the last checkpoint.</p>"
        )
        last = v["last_checkpoint"]
        if last:
            out.append(
                "<p>Last signed checkpoint: tree size "
                f"{num(last['tree_size'], checkpoints, f'audit:{index}:tree_size')}, root "
                f"<code>{_e(last['root_hash'])}</code>, at {_time(last.get('time'))}, signed by "
                + ", ".join(_key(k) for k in last.get("signers", []))
                + "</p>"
            )
        for kind in ("problems", "warnings"):
            if v[kind]:
                items = "".join(f"<li>{_e(x)}</li>" for x in v[kind])
                out.append(f"<p>{kind.capitalize()}:</p><ul>{items}</ul>")
    receipts = s["receipts"]
    if receipts["source"]:
        r = receipts["source"]
        verdict = (
            '<span class="good">hash chain intact</span>'
            if receipts["ok"]
            else '<span class="bad">FAILED</span>'
        )
        out.append(
            f"<h3>Receipt log</h3><p>{link(r, r)}: {verdict}, "
            f"{num(receipts['receipts'], r, 'receipts:count')} receipts, "
            f"{num(receipts['signed'], r, 'receipts:signed')} signed by the audit role.</p>"
        )
        if receipts["problems"]:
            out.append("<ul>" + "".join(f"<li>{_e(p)}</li>" for p in receipts["problems"]) + "</ul>")
    out.append("</section>")
    return "".join(out)


def _attestations(s: dict[str, Any]) -> str:
    a = s["attestations"]
    out = [_open("attestations", "Manual attestations")]
    rows = [
        [
            f"<code>{_e(x['control'])}</code>",
            _e(x["host"]),
            _e(x["status"]),
            _key(x["approver"]),
            _time(x["time"]) + " until " + _time(x["expires"]),
            _e(x["explanation"]),
            link(x["file"], "file"),
        ]
        for x in a["applied"]
    ]
    out.append(
        _table(
            "Merged into the checklists",
            ["Control", "Host", "Status", "Approver", "Signed, expires", "Explanation", "Attestation"],
            rows,
        )
    )
    if a["ignored"]:
        items = "".join(f"<li>{link(i['file'], i['file'])}: {_e(i['reason'])}</li>" for i in a["ignored"])
        out.append(f"<p>Ignored:</p><ul>{items}</ul>")
    out.append("</section>")
    return "".join(out)


def render(s: dict[str, Any]) -> str:
    """The page."""
    window = s["window"]
    scope = (
        f"records from {_time(window['since'])} to {_time(window['until'])}"
        if window["since"] or window["until"]
        else "everything the sources held"
    )
    root = s["trustRoot"]
    sections = [
        ("summary", "At a glance"),
        ("hosts", "Hosts: STIG controls by category"),
        ("bundles", "Bundles admitted and refused"),
        ("gateway", "Gateway decisions"),
        ("held", "Held requests and their approvers"),
        ("audit", "Audit logs and receipts"),
        ("attestations", "Manual attestations"),
        ("poam", "POA&M"),
    ]
    nav = "".join(f'<li><a href="#{ident}">{_e(title)}</a></li>' for ident, title in sections)
    notes = "".join(f"<li>{_e(n)}</li>" for n in s["notes"])
    poam = (
        f"{_open('poam', 'POA&M')}<p>"
        f"{num(s['poam']['rows'], 'poam.csv', 'poam:rows')} open findings, one row each in the eMASS "
        f"POA&amp;M columns: {link('poam.csv', 'poam.csv')}, {link('poam.xlsx', 'poam.xlsx')}. Scheduled "
        "completion, milestones and resources are left for the operator.</p></section>"
    )
    return "".join(
        [
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
            "style-src 'unsafe-inline'; img-src data:\">",
            f"<title>Evidence package {_e(s['created'])}</title><style>{CSS}</style></head><body>",
            "<header><h1>Evidence package</h1><p>",
            f"Built {_time(s['created'])} and signed by audit key {_key(s['signer'])} under trust root "
            f"v{num(root['version'], root['source'], 'root:version')} "
            f"({link(root['source'], root['source'])}); {scope}. ",
            f"The {link('evidence.dsse.json', 'signed manifest')} lists every file with its SHA-384; check "
            "the whole package with <code>enclave evidence verify DIR --trust root.json</code>.</p>",
            f'<nav aria-label="Contents"><ul>{nav}</ul></nav></header><main>',
            _tiles(s),
            _hosts(s),
            _bundles(s),
            _gateway(s),
            _held(s),
            _audit(s),
            _attestations(s),
            poam,
            f'<section id="notes"><h2>Notes</h2><ul>{notes}</ul></section>' if notes else "",
            "</main></body></html>\n",
        ]
    )
