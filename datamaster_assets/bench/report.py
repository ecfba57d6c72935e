"""Plain-text tables of a benchmark report (the same dict that is written as JSON)."""

from __future__ import annotations


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [_row(header, widths), _row(["-" * w for w in widths], widths), *(_row(r, widths) for r in rows)]


def measurement_rows(report: dict) -> list[list[str]]:
    rows = []
    for m in report["measurements"]:
        s = m["summary"]
        if m["skipped"] or s is None:
            rows.append([m["name"], m["kind"], "-", "-", "-", "-", "-", "-", m["skipped"] or "no samples"])
            continue
        checks = m["checks"]
        verified = "ok" if checks and all(c["ok"] for c in checks.values()) else ("-" if not checks else "FAILED")
        rows.append([
            m["name"],
            m["kind"],
            str(s["runs"]),
            f"{s['median_s']:.2f}",
            f"{s['min_s']:.2f}-{s['max_s']:.2f}",
            f"{s['median_rss_mib']:.0f}",
            f"{s['median_user_s']:.2f}/{s['median_sys_s']:.2f}",
            f"{m['rows']:,}" if m["rows"] is not None else "-",
            verified + (f" ({'; '.join(m['notes'])})" if m["notes"] else ""),
        ])
    return rows


def _thp(enabled: bool | None) -> str:
    return "unknown" if enabled is None else ("on" if enabled else "off (DATAMASTER_TRANSPARENT_HUGE_PAGES)")


def format_report(report: dict) -> str:
    machine = report["machine"]
    ds = report["dataset"]
    lines = [
        "",
        f"{ds['reviews']:,} reviews (seed {ds['seed']}), {report['runs']} run(s); {machine['cpus']} CPUs, "
        f"Python {machine['python']}, isal {machine['isal'] or 'not installed'}, "
        f"Java {'present' if machine['java'] else 'absent'}, transparent huge pages "
        f"{_thp(machine.get('transparent_huge_pages'))}",
        "",
    ]
    lines += _table(["measurement", "kind", "runs", "median s", "min-max s", "peak MiB", "CPU user/sys s", "rows",
                     "verified"],
                    measurement_rows(report))
    lines += ["", "Targets" + ("" if report["full_size"] else " (absolute targets apply at full size only)"), ""]
    target_rows = [
        [t["description"], f"{t['comparison']} {t['limit']:g} {t['unit']}",
         "-" if t["measured"] is None else f"{t['measured']:.2f} {t['unit']}", t["status"]]
        for t in report["targets"]
    ]
    lines += _table(["target", "limit", "measured", "status"], target_rows)
    lines += ["", f"outputs verified: {'yes' if report['verified'] else 'NO'}; took {report['duration_s']:.0f} s"]
    return "\n".join(lines)
