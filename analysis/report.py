"""Build ``REPORT.md`` from the raw result files only.

Usage::

    python -m analysis.report [--results results] [--out REPORT.md]

For every registered experiment (:data:`analysis.experiments.registry.EXPERIMENTS`) the report reads
``<results>/<id>/summary.json`` (written by :func:`analysis.experiments.framework.compute`) and
the figures ``<results>/figures/<id>_*.png``, and writes a section with: the profile, the exact
command, the run time and git revision (all from the file's metadata), the description and notes,
the figures, and a table *claim / kind / paper / ours (95% CI, n) / criterion / verdict / source*.
Verdicts are recomputed from each stored claim's interval and criterion
(:func:`analysis.claims.claim_from_dict`), never read as stored. Nothing else is computed here: a
number that is not in a result file cannot appear in the report. A missing or unreadable summary is
reported as such; it never stops the report from being written. The overview counts decided claims
and lists the undecided ones with the sample size that would decide them.

Extra tables go in ``summary.json["tables"]`` as ``{"title", "columns", "rows", "source"}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from analysis.claims import VERDICTS, Claim, claim_from_dict
from analysis.experiments.registry import EXPERIMENTS, ExperimentInfo
from analysis.store import results_root
from miniattn.io import atomic_write_text

__all__ = ["format_value", "format_ci", "render_experiment", "render_report", "build_report", "main"]


def format_value(value: Any, fmt: str | None = None) -> str:
    """A table cell for ``value``: numbers with ``fmt`` (default 4 significant digits), None -> "–"."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and fmt is None:
        return str(value)
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            return "–"
        return format(value, fmt or ".4g")
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v, fmt) for v in value)
    return _escape(str(value))


def _unbounded_ends(claim: dict) -> dict:
    """A stored claim with a one-sided null interval end read as unbounded.

    Strict JSON has no infinity, so an interval end of ±inf (a censored time to learn bounds a ratio
    on one side only) is stored as null, and :func:`analysis.claims.claim_from_dict` reads null as
    NaN, which would make such a claim undecided. A null *beside a finite end* can only be that
    infinity (an interval of one run is null at both ends and stays undecided): the low end is
    −inf, the high end +inf.
    """
    interval = claim.get("interval")
    if not (isinstance(interval, list) and len(interval) == 2) or (interval[0] is None) == (interval[1] is None):
        return claim
    low, high = interval
    return {**claim, "interval": ["-inf" if low is None else low, "inf" if high is None else high]}


def format_ci(ci: Any, fmt: str | None = None) -> str:
    """``" [lo, hi]"`` for a two-element interval, else the empty string."""
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
        return f" [{format_value(ci[0], fmt)}, {format_value(ci[1], fmt)}]"
    return ""


def _escape(text: str) -> str:
    """Escape characters that would break a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _verdict(claim: Claim) -> str:
    if claim.verdict == "holds":
        return "holds"
    if claim.verdict == "fails":
        return "**fails**"
    decide = f"; n ≈ {claim.n_to_decide} would decide it" if claim.n_to_decide else ""
    return f"*undecided*{decide}"


def _ours(claim: Claim) -> str:
    text = format_value(claim.value, claim.fmt)
    if claim.interval is not None:
        text += format_ci(list(claim.interval), claim.fmt)
    if claim.n is not None:
        text += f", n = {claim.n}"
    return text


def _link(target: Path, report_dir: Path, text: str | None = None) -> str:
    rel = os.path.relpath(target, report_dir).replace(os.sep, "/")
    return f"[{text or rel}]({rel})"


def _span_text(s: dict) -> str:
    """How long the runs took on the clock, and how much of them the last compute step reused."""
    span, reused, wall = s.get("runs_span_s"), s.get("runs_reused") or 0, s.get("wall_time_s")
    text = f", computed within {_fmt_seconds(span)} of wall time" if span is not None else ""
    if reused:
        return text + (f"; the last compute step reused {reused} of them from earlier computes "
                       f"and took {_fmt_seconds(wall)}")
    return text + f"; wall time of the compute step {_fmt_seconds(wall)}"


def _fmt_seconds(s: Any) -> str:
    if not isinstance(s, (int, float)) or not math.isfinite(s):
        return "unknown"
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min"


def _table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(_escape(str(c)) for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(rows_cell for rows_cell in row) + " |" for row in rows]
    return lines


def _stale_code(summary: Mapping, info: ExperimentInfo) -> str:
    """Why a summary's code fingerprint is not the current code's (empty when it is, or unknown)."""
    from analysis.fingerprint import fingerprint

    recorded = summary.get("code")
    if not isinstance(recorded, str):
        return ""
    try:
        current = fingerprint(info.module)
    except Exception:   # the module cannot be imported here: nothing to compare with
        return ""
    return "" if current == recorded else f"fingerprint {recorded[:12]}, the code now {current[:12]}"


def render_experiment(info: ExperimentInfo, results: Path, report_dir: Path) -> tuple[list[str], dict]:
    """Markdown lines of one experiment's section, and a status row for the overview table."""
    path = results / info.id / "summary.json"
    lines = [f"## {info.title}", ""]
    status = {"id": info.id, "title": info.title, "state": "missing", "claims": None, "undecided": [],
              "profile": "–", "time": "–"}
    make_cmd = f"make repro-{info.id}"
    if not path.is_file():
        lines += [f"**Missing**: no result file `{os.path.relpath(path, report_dir)}`. "
                  f"This experiment has not been run (or is not implemented yet). "
                  f"Run `{make_cmd}` or `python -m analysis.experiments all {info.id}`.", ""]
        return lines, status
    try:
        with open(path) as f:
            s = json.load(f)
        if not isinstance(s, Mapping):
            raise ValueError("summary is not a JSON object")
    except (OSError, ValueError) as exc:
        status["state"] = "unreadable"
        lines += [f"**Unreadable result file** `{os.path.relpath(path, report_dir)}`: {_escape(str(exc))}. "
                  f"Rerun `{make_cmd}`.", ""]
        return lines, status

    meta = s.get("metadata") or {}
    git = meta.get("git") or {}
    rev = git.get("revision")
    rev_txt = (rev[:10] if isinstance(rev, str) else "unknown") + (" (dirty tree)" if git.get("dirty") else "")
    versions = meta.get("versions") or {}
    vers_txt = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
    status.update(state="done", profile=str(s.get("profile", "–")),
                  time=_fmt_seconds(s.get("compute_time_s")))
    lines += [
        f"- Result file: {_link(path, report_dir)} (profile **{s.get('profile', 'unknown')}**, "
        f"computed {s.get('finished', 'unknown')}, git {rev_txt})",
        f"- Command: `{s.get('command') or ('python -m analysis.experiments compute ' + info.id)}` "
        f"(or `{make_cmd}`)",
        f"- Run time: {_fmt_seconds(s.get('compute_time_s'))} of compute over "
        f"{len(s.get('runs') or [])} runs" + _span_text(s),
    ]
    if vers_txt:
        lines.append(f"- Versions: {vers_txt}")
    stale = _stale_code(s, info)
    if stale:
        lines.append(f"- **Computed by an earlier version of its code** ({stale}); `{make_cmd}` recomputes it")
        status["state"] = "done (earlier code)"
    lines.append("")
    if s.get("description"):
        lines += [str(s["description"]).strip(), ""]

    for fig_path in sorted((results / "figures").glob(f"{info.id}_*.png")):
        lines += [f"![{fig_path.stem}]({os.path.relpath(fig_path, report_dir).replace(os.sep, '/')})", ""]
    if not any((results / "figures").glob(f"{info.id}_*.png")):
        lines += [f"*No figures yet: run `python -m analysis.experiments plot {info.id}`.*", ""]

    claims = []
    for c in s.get("claims") or []:
        try:
            claims.append(claim_from_dict(_unbounded_ends(c)))
        except (KeyError, TypeError, ValueError) as exc:
            lines += [f"*A claim of this summary is unreadable ({_escape(str(exc))}); rerun `{make_cmd}`.*", ""]
    if claims:
        rows = []
        for c in claims:
            src = c.source or os.path.relpath(path, results)
            rows.append([
                _escape(c.statement), c.kind,
                format_value(c.paper, c.fmt if isinstance(c.paper, (int, float)) else None),
                _ours(c), _escape(c.criterion.name) + (f" — {_escape(c.criterion.why)}" if c.criterion.why else ""),
                _verdict(c), _link(results / src, report_dir, src),
            ])
        counts = {v: sum(c.verdict == v for c in claims) for v in VERDICTS}
        status["claims"] = counts
        status["undecided"] = [(c.statement, c.n, c.n_to_decide) for c in claims if not c.decided]
        smoke = " **Smoke run (quick profile): sizes too small to be evidence.**" if s.get("profile") == "quick" else ""
        lines += [f"Claims: {counts['holds']} hold, {counts['fails']} fail, {counts['undecided']} undecided.{smoke}", ""]
        lines += _table(["Claim", "Kind", "Paper", "Ours (95% CI, n)", "Criterion", "Verdict", "Source"], rows) + [""]
        for c in claims:
            if c.note:
                lines.append(f"- *{_escape(c.statement)}*: {_escape(c.note)}")
        if any(c.note for c in claims):
            lines.append("")

    for t in s.get("tables") or []:
        cols = t.get("columns") or []
        fmt = t.get("fmt")
        lines += [f"**{t.get('title', 'Table')}** (source: "
                  f"{_link(results / (t.get('source') or os.path.relpath(path, results)), report_dir, t.get('source') or os.path.relpath(path, results))})", ""]
        lines += _table(cols, [[format_value(v, fmt) for v in row] for row in t.get("rows") or []]) + [""]

    notes = s.get("notes") or []
    if notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    return lines, status


def render_report(results: str | os.PathLike | None = None, report_dir: str | os.PathLike = ".",
                  experiments: Sequence[ExperimentInfo] | None = None) -> str:
    """The whole report as a markdown string (links relative to ``report_dir``)."""
    if experiments is None:
        from analysis.experiments import registry
        experiments = registry.EXPERIMENTS
    results = results_root(results)
    report_dir = Path(report_dir)
    sections, statuses = [], []
    for info in experiments:
        lines, status = render_experiment(info, results, report_dir)
        sections += lines
        statuses.append(status)
    head = [
        "# miniattn — reproduction report",
        "",
        "Reproduction of Snell et al., *Approximating How Single Head Attention Learns* "
        "(arXiv 2103.07601) with NumPy models written from scratch. Generated by "
        "`python -m analysis.report` from the result files under "
        f"`{os.path.relpath(results, report_dir)}/` only: every number below is read from the result "
        "file linked in its row; nothing is recomputed. Regenerate everything with `make reproduce` "
        "(paper-scale seeds and sizes: `make reproduce FULL=1`).",
        "",
        "Every claim has a criterion written in the experiment's code before its runs, our value with "
        "its 95% interval and sample size, and a verdict: **holds** (the whole interval satisfies the "
        "criterion), **fails** (none of it does) or *undecided* (the interval straddles the criterion: "
        "the sample cannot decide; the sample size that would decide it at the observed effect is "
        "given). Claims of kind *check* test our own derivations and implementation, not the paper; "
        "*reproduction* claims are the paper's; *beyond* claims are theory predictions the paper does "
        "not test.",
        "",
        "| Experiment | State | Holds | Fails | Undecided | Profile | Compute time (sum over runs) |",
        "|---|---|---|---|---|---|---|",
    ]
    total = {v: 0 for v in VERDICTS}
    for st in statuses:
        counts = st["claims"] or {}
        for v in VERDICTS:
            total[v] += counts.get(v, 0)
        cells = [str(counts[v]) if counts else "–" for v in VERDICTS]
        head.append(f"| {_escape(st['title'])} | {st['state']} | {' | '.join(cells)} | {st['profile']} | "
                    f"{st['time']} |")
    head += ["", f"Decided claims: {total['holds'] + total['fails']} ({total['holds']} hold, "
                 f"{total['fails']} fail); undecided: {total['undecided']}.", ""]
    undecided = [(st["id"], u) for st in statuses for u in st["undecided"]]
    if undecided:
        head += ["Undecided claims, with the sample size that would decide each at the observed effect:", ""]
        for exp_id, (statement, n, need) in undecided:
            need_txt = f"≈ {need} needed" if need else "no sample size decides it at the observed effect"
            head.append(f"- {exp_id.upper()}: {_escape(statement)} (n = {n}; {need_txt})")
    head.append("")
    return "\n".join(head + sections).rstrip() + "\n"


def build_report(results: str | os.PathLike | None = None,
                 out: str | os.PathLike = "REPORT.md") -> Path:
    """Render the report and write it atomically to ``out``; returns the path."""
    out = Path(out)
    text = render_report(results, out.parent if str(out.parent) else ".")
    atomic_write_text(out, text)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m analysis.report [--results DIR] [--out REPORT.md]``."""
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n")[0])
    parser.add_argument("--results", default=None, help="results root (default ./results)")
    parser.add_argument("--out", default="REPORT.md")
    args = parser.parse_args(argv)
    path = build_report(args.results, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
