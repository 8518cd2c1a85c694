"""The POA&M: one row per open finding per host, in the columns of eMASS's POA&M import
template, as CSV and as XLSX (openpyxl, the `evidence` extra). What only the operator can say
(scheduled completion, milestones, resources, office) is left empty for them to fill in."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import datetime
from typing import Any

COLUMNS = (
    "POA&M Item ID",
    "Control Vulnerability Description",
    "Controls / APs",
    "Office/Org",
    "Security Checks",
    "Resources Required",
    "Scheduled Completion Date",
    "Milestone with Completion Dates",
    "Milestone Changes",
    "Source Identifying Vulnerability",
    "Status",
    "Comments",
    "Raw Severity",
    "Devices Affected",
    "Mitigations",
    "Severity",
    "Recommendations",
)
RAW_SEVERITY = {"CAT I": "I", "CAT II": "II", "CAT III": "III"}
SEVERITY = {"CAT I": "High", "CAT II": "Moderate", "CAT III": "Low"}
MAX_CELL = 32000  # an Excel cell holds 32,767 characters


def rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    """One row per open finding of every host's (attested) checklist, worst first."""
    found = []
    for host in summary["hosts"]:
        checklist = host["checklist"]
        if checklist is None:
            continue
        for finding in checklist["open"]:
            found.append((host["host"], checklist["effective"], finding))
    found.sort(key=lambda f: (_rank(f[2]), f[0], f[2]["id"]))
    table = []
    for number, (host, source, finding) in enumerate(found, 1):
        table.append(
            {
                "POA&M Item ID": str(number),
                "Control Vulnerability Description": f"{finding['id']}: {finding['title']}",
                "Controls / APs": ", ".join(finding["ccis"]),
                "Office/Org": "",
                "Security Checks": f"{finding['id']}; {finding['vuln']}; {finding['rule']}",
                "Resources Required": "",
                "Scheduled Completion Date": "",
                "Milestone with Completion Dates": "",
                "Milestone Changes": "",
                "Source Identifying Vulnerability": f"DISA STIG checklist (CKLB) {source}, enclave_harden",
                "Status": "Ongoing",
                "Comments": _cell(finding["details"]),
                "Raw Severity": RAW_SEVERITY[finding["category"]],
                "Devices Affected": host,
                "Mitigations": "",
                "Severity": SEVERITY[finding["category"]],
                "Recommendations": _cell(finding["fix"]),
            }
        )
    return table


def _rank(finding: dict[str, Any]) -> int:
    return tuple(RAW_SEVERITY).index(finding["category"])


def _cell(text: str) -> str:
    # A cell starting with = + - @ is a formula to a spreadsheet: shown as text, never run.
    text = text if len(text) <= MAX_CELL else text[:MAX_CELL] + "..."
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def csv_bytes(table: Sequence[dict[str, str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue().encode("utf-8")


def xlsx_bytes(table: Sequence[dict[str, str]], created: datetime) -> bytes:
    from openpyxl import Workbook
    from openpyxl.styles import Alignment, Font

    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "POA&M"
    sheet.append(list(COLUMNS))
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    for row in table:
        sheet.append([row[column] for column in COLUMNS])
    for row in sheet.iter_rows(min_row=2):
        for cell in row:
            cell.data_type = "s"  # text, whatever it looks like
            cell.alignment = Alignment(wrap_text=True, vertical="top")
    sheet.freeze_panes = "A2"
    widths = {"Control Vulnerability Description": 60, "Comments": 60, "Recommendations": 60}
    for index, column in enumerate(COLUMNS):
        sheet.column_dimensions[sheet.cell(1, index + 1).column_letter].width = widths.get(column, 18)
    moment = created.replace(tzinfo=None)
    book.properties.created = moment
    book.properties.modified = moment
    book.properties.creator = "enclave evidence build"
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()
