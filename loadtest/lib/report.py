#!/usr/bin/env python3
"""loadtest/lib/report.py -- turn load-test outputs into a markdown table
and a PNG chart (rate by message size and sessions, tern vs Postfix).

Purpose: read the stdout of accept.sh, relay.sh and retrieval.sh (the lines
they print with lt_say, also kept in loadtest/out/), pick every result row
("1KiB s=10 ..."), and write OUT.md (one table per test, plus the header
comments of each run so the figures keep their context) and OUT.png (one
panel per test: bars of msg/s per case for the ceiling, tern and Postfix;
for retrieval, which has no ceiling, tern and Dovecot).

Must never: invent a figure (a value the script printed as NA stays NA and
is left out of the chart), or need anything but the standard library for
the table (matplotlib is imported only for the chart).

Usage: report.py OUT_PREFIX NAME=FILE [NAME=FILE ...]
  NAME is accept, relay or retrieval; FILE that script's captured stdout.
"""

import re
import sys

# A result row: "<size>KiB s=<sessions> [mode] <rate> <rate> <rate> ...":
# accept and relay print "<ceiling> <tern> <postfix>", optionally after a
# tern io mode; retrieval prints "<protocol> <tern> <dovecot>".
ROW = re.compile(
    r"^(?P<size>\d+KiB)\s+s=(?P<sessions>\d+)(?:\s+(?P<mode>[a-z][a-z0-9_-]*))?"
    r"(?P<values>(?:\s+\S+){3})\s"
)

# Per test: the ceiling's name (None: the test has no ceiling column), the
# two servers compared, what the rate is, and what the mode column holds.
COLUMNS = {
    "accept": ("smtp-sink (ceiling)", "tern", "Postfix", "messages accepted durably per second", "mode"),
    "relay": ("direct (ceiling)", "tern", "Postfix", "messages relayed end to end per second", "mode"),
    "retrieval": (None, "tern", "Dovecot", "messages retrieved per second (POP3 RETR / IMAP FETCH)", "protocol"),
}


def number(text):
    try:
        return float(text)
    except ValueError:
        return None


def parse(path, has_ceiling):
    """(comment lines, rows) of one captured run."""
    comments, rows = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("# "):
                comments.append(line[2:])
                continue
            m = ROW.match(line)
            if m:
                row = m.groupdict()
                row["mode"] = row["mode"] or ""
                values = row.pop("values").split()
                if has_ceiling:
                    row["ceiling"], row["tern"], row["other"] = values
                else:
                    row["ceiling"] = "NA"
                    row["tern"], row["other"] = values[:2]
                # The check column is last and may hold spaces: "ok" or notes.
                row["check"] = "ok" if line.rstrip().endswith(" ok") else "not ok (see the log)"
                rows.append(row)
    return comments, rows


def ratio(a, b):
    a, b = number(a), number(b)
    if a is None or b is None or b == 0:
        return "NA"
    return f"{a / b:.2f}"


def markdown(runs):
    out = ["# tern load tests", ""]
    for name, (comments, rows) in runs:
        ceiling, tern, other, what, mode = COLUMNS[name]
        out.append(f"## {name}: {what}, {tern} vs {other}")
        out.append("")
        if not rows:
            out.append("No result rows (the run failed before its first case; see its log).")
            out.append("")
            continue
        head = ["size", "sessions", mode] + ([ceiling] if ceiling else []) + [tern, other, f"tern/{other}", "check"]
        align = ["---", "---:", "---"] + (["---:"] if ceiling else []) + ["---:", "---:", "---:", "---"]
        out.append("| " + " | ".join(head) + " |")
        out.append("| " + " | ".join(align) + " |")
        for r in rows:
            cells = [r["size"], r["sessions"], r["mode"] or "-"] + ([r["ceiling"]] if ceiling else [])
            cells += [r["tern"], r["other"], ratio(r["tern"], r["other"]), r["check"]]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        if comments:
            out.append("```")
            out.extend(comments)
            out.append("```")
            out.append("")
    return "\n".join(out)


def chart(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(n, r) for n, (_, r) in runs if r]
    if not runs:
        return False
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.5), squeeze=False)
    for ax, (name, rows) in zip(axes[0], runs):
        ceiling, tern, other, what, _ = COLUMNS[name]
        labels = [f"{r['size']}\ns={r['sessions']}" + (f"\n{r['mode']}" if r["mode"] else "") for r in rows]
        bars = [("tern", tern, "#1f77b4"), ("other", other, "#d62728")]
        if ceiling:
            bars.insert(0, ("ceiling", ceiling, "#bbbbbb"))
        width = 0.8 / len(bars)
        for k, (key, label, color) in enumerate(bars):
            offset = (k - (len(bars) - 1) / 2) * width
            xs = [i + offset for i in range(len(rows)) if number(rows[i][key]) is not None]
            ys = [number(r[key]) for r in rows if number(r[key]) is not None]
            ax.bar(xs, ys, width, label=label, color=color)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_title(f"{name}: {tern} vs {other}\n{what}", fontsize=10)
        ax.set_ylabel("msg/s")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    prefix = argv[1]
    runs = []
    for arg in argv[2:]:
        name, _, path = arg.partition("=")
        if name not in COLUMNS or not path:
            sys.exit(f"report.py: {arg!r}: expected accept=FILE, relay=FILE or retrieval=FILE")
        runs.append((name, parse(path, COLUMNS[name][0] is not None)))
    with open(prefix + ".md", "w", encoding="utf-8") as f:
        f.write(markdown(runs))
        f.write(f"\n![rates by message size and sessions]({prefix.rsplit('/', 1)[-1]}.png)\n")
    if not chart(runs, prefix + ".png"):
        print("report.py: no result rows, no chart", file=sys.stderr)
    print(prefix + ".md")


if __name__ == "__main__":
    main(sys.argv)
