"""``visionr3 view``: one self-contained HTML file to read trajectories — eval results or training rollout dumps.

    visionr3 view outputs/eval/results.jsonl --out report.html
    visionr3 view outputs/eval/results.jsonl --only wrong --tool used --benchmark vstar --limit 50
    visionr3 view checkpoints/run1/rollouts/ --out rollouts.html      # trainer.rollout_data_dir, sorted by step

A number says a model got 62% on V*; only the trajectories say *why*: where it zoomed, what the crop showed, what it
wrote next and which reward term paid for it. Each sample becomes a card with the question image and every requested
box drawn on it, the tool-returned images in the turns that received them, each turn's text, the tool calls, the
options (gold marked) and the reward breakdown. Filters (benchmark, correct/wrong, used a tool or not, free text)
run in a few lines of inline JavaScript and read their state from the URL fragment too (``report.html#only=wrong``),
so a filtered view is a link.

Why one file: reports are copied off clusters, attached to issues and opened on laptops with no access to the run's
folders. So every image is embedded as a ``data:`` URL, re-encoded by Pillow to at most :data:`MAX_SIDE` pixels on the
long side (the smaller of JPEG and PNG), and nothing is fetched: no external CSS, JS or fonts, and a
Content-Security-Policy that allows only ``data:`` images and the report's own script (by its hash). Model output is
untrusted text: everything from a record is HTML-escaped, and record data never enters the script.

Boxes are drawn as SVG rectangles in an SVG whose ``viewBox`` is the *source* image's size (``image_size``), with the
display copy stretched over it: a record's boxes are in source pixels while its stored image may be downscaled, and
this way no coordinate is ever rescaled by hand.

The inputs are read into cards by :mod:`visionr3.eval.cards`; this module renders them.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import io
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionr3.eval.cards import Card, ViewError, load_cards, select

MAX_SIDE = 1024
"""Embedded images are re-encoded to at most this many pixels on the long side: enough to read a crop, small enough
that a report of a few hundred samples stays a few tens of MB."""

BOX_COLOUR = "#ff0000"
"""Stroke of the requested boxes. Pure red is used nowhere else in the page, so a screenshot test can find it."""


# --- images -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Embedded:
    """An image ready to inline: its ``data:`` URL and the size of the file it came from."""

    url: str
    width: int  # of the source file, before re-encoding
    height: int


def embed_image(source: str, max_side: int = MAX_SIDE) -> Embedded:
    """Read ``source`` (a path or a base64 ``data:`` URL) with Pillow and re-encode it for inlining.

    Re-encoding (never copying the bytes) bounds the report's size and means a ``data:`` URL from a dump cannot smuggle
    anything but pixels into the page. Raises ``OSError`` / ``ValueError`` for a missing or unreadable image."""
    from PIL import Image

    if source.startswith("data:"):
        header, _, payload = source.partition(",")
        if not header.endswith(";base64"):
            raise ValueError("only base64 data: URLs hold images")
        opened = Image.open(io.BytesIO(base64.b64decode(payload)))
    else:
        opened = Image.open(source)
    with opened as image:
        image.load()
        width, height = image.size
        alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
        image = image.convert("RGBA" if alpha else "RGB")
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    encoded = {}
    png = io.BytesIO()
    image.save(png, format="PNG", optimize=True)
    encoded["png"] = png.getvalue()
    if not alpha:  # photographs: JPEG; flat synthetic canvases and text: usually PNG. Keep the smaller.
        jpeg = io.BytesIO()
        image.save(jpeg, format="JPEG", quality=85)
        encoded["jpeg"] = jpeg.getvalue()
    kind, data = min(encoded.items(), key=lambda item: len(item[1]))
    return Embedded(f"data:image/{kind};base64,{base64.b64encode(data).decode('ascii')}", width, height)


class _ImageCache:
    """Each source is read and re-encoded once per report; a failure is kept as its reason for the placeholder."""

    def __init__(self) -> None:
        self._seen: dict[str, Embedded | str] = {}

    def get(self, source: str) -> Embedded | str:
        if not source:
            return "no image"
        if source not in self._seen:
            try:
                self._seen[source] = embed_image(source)
            except FileNotFoundError:
                self._seen[source] = "missing image"
            except Exception as exc:  # noqa: BLE001 - any undecodable file is a placeholder, never a crash
                self._seen[source] = f"unreadable image ({type(exc).__name__})"
        return self._seen[source]


# --- HTML ---------------------------------------------------------------------------------------------------------


def esc(value: Any) -> str:
    """Text for element content and quoted attributes: everything from a record goes through here."""
    return html.escape("" if value is None else str(value), quote=True)


def box_rect(box: Any) -> tuple[float, float, float, float] | None:
    """``[x1, y1, x2, y2]`` (any corner order) as SVG's ``(x, y, width, height)``; ``None`` for anything that is not
    four finite numbers, so a malformed box in a dump is reported, not drawn somewhere wrong."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box):
        return None
    x1, y1, x2, y2 = box
    return min(x1, x2), min(y1, y2), abs(x2 - x1), abs(y2 - y1)


def _num(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def question_figure(card: Card, cache: _ImageCache) -> str:
    """The question image with every box as an SVG rect, in a ``viewBox`` of the source size (see module doc)."""
    source = card.images[0] if card.images else ""
    got = cache.get(source)
    frame = card.frame or ((got.width, got.height) if isinstance(got, Embedded) else None)
    rects = [(i, box_rect(box), box) for i, box in enumerate(card.boxes, start=1)]
    bad = [f"#{i} {_fmt(box)}" for i, rect, box in rects if rect is None]
    if frame is None and not source:
        boxes = ", ".join(_fmt(box) for box in card.boxes)
        return f'<p class="note">boxes (no image): {esc(boxes)}</p>' if boxes else ""
    width, height = frame or (448, 448)
    parts = [
        f'<svg class="qimg" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" '
        f'role="img" aria-label="question image with {len(card.boxes)} box(es)">'
    ]
    if isinstance(got, Embedded):
        parts.append(
            f'<image href="{got.url}" x="0" y="0" width="{width}" height="{height}" preserveAspectRatio="none"/>'
        )
    else:
        label = card.image_labels[0] if card.image_labels else ""
        parts.append(f'<rect class="missing" x="0" y="0" width="{width}" height="{height}"/>')
        parts.append(
            f'<text class="missing" x="{width / 2:g}" y="{height / 2:g}" font-size="{max(width, height) / 28:.0f}" '
            f'text-anchor="middle">{esc(got)}: {esc(label)}</text>'
        )
    font = max(width, height) / 36
    for i, rect, box in rects:
        if rect is None:
            continue
        x, y, w, h = rect
        parts.append(
            f'<rect class="box" x="{_num(x)}" y="{_num(y)}" width="{_num(w)}" height="{_num(h)}" '
            f'data-box="{esc(_fmt(box))}"><title>box {i}: {esc(_fmt(box))}</title></rect>'
            f'<text class="boxlabel" x="{_num(x)}" y="{_num(max(y - font * 0.25, font))}" '
            f'font-size="{font:.0f}">{i}</text>'
        )
    parts.append("</svg>")
    caption = []
    if card.frame:
        caption.append(f"source {card.frame[0]}×{card.frame[1]}")
    elif isinstance(got, Embedded):
        caption.append(f"image {got.width}×{got.height}")
    if card.seen_size:
        caption.append(f"model saw {card.seen_size[0]}×{card.seen_size[1]}")
    if card.boxes:
        caption.append(f"{len(card.boxes)} box(es)" + (" in source pixels" if card.frame else ""))
    if bad:
        caption.append("not drawn (not four numbers): " + "; ".join(bad))
    return f'<figure class="question">{"".join(parts)}<figcaption>{esc(" · ".join(caption))}</figcaption></figure>'


def _inline_image(card: Card, index: int, cache: _ImageCache, produced_by: dict[int, str]) -> str:
    source = card.images[index] if 0 <= index < len(card.images) else ""
    label = card.image_labels[index] if 0 <= index < len(card.image_labels) else f"index {index} (not in images)"
    got = cache.get(source)
    caption = f"image #{index}" + (f" · {produced_by[index]}" if index in produced_by else "")
    if isinstance(got, Embedded):
        body = (
            f'<img src="{got.url}" alt="{esc(caption)}" loading="lazy">'
            f"<figcaption>{esc(caption)} · {got.width}×{got.height}</figcaption>"
        )
    else:
        body = f'<div class="placeholder">{esc(got)}: {esc(label)}</div><figcaption>{esc(caption)}</figcaption>'
    return f'<figure class="toolimg">{body}</figure>'


def _table(rows: Iterable[tuple[str, str]], cls: str) -> str:
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="{cls}">{body}</table>' if body else ""


def _card_header(card: Card) -> str:
    if card.correct is None:
        badges = ['<span class="badge">correct?</span>']
    else:
        badges = ['<span class="badge ok">correct</span>' if card.correct else '<span class="badge bad">wrong</span>']
    tool = {True: "tool", False: "no tool", None: "tool?"}[card.used_tool]
    badges.append(f'<span class="badge">{tool}</span>')
    if card.score is not None:
        badges.append(f'<span class="badge">score {esc(_fmt(card.score))}</span>')
    category = f' · <span class="cat">{esc(card.category)}</span>' if card.category else ""
    model = f" · {esc(card.model)}" if card.model else ""
    return (
        f'<header><span class="bench">{esc(card.benchmark)}</span>{category} · '
        f'<code class="key">{esc(card.key)}</code> {"".join(badges)}'
        f'<span class="src">{esc(card.source)}{model}</span></header>'
    )


def _options(card: Card) -> str:
    """The options as shown (letter order), the gold one and the predicted one marked."""
    gold = ord(card.answer) - ord("A") if len(card.answer) == 1 and card.answer.isalpha() else -1
    picked = card.prediction.strip().upper()
    items = []
    for i, option in enumerate(card.options):
        letter = chr(ord("A") + i) if i < 26 else str(i)
        marks = ' <span class="mark gold">gold</span>' if i == gold else ""
        marks += ' <span class="mark pred">predicted</span>' if picked == letter else ""
        items.append(f'<li class="{"gold" if i == gold else ""}"><b>{letter}.</b> {esc(option)}{marks}</li>')
    return f'<ol class="options">{"".join(items)}</ol>'


def _tool_calls(card: Card) -> str:
    rows = []
    for n, call in enumerate(card.tool_calls, start=1):
        if call.valid:
            result = "✓ " + (f"image #{call.image}" if call.image is not None else "ok")
        else:
            result = "✗ " + (call.error or "invalid")
        rows.append(
            f'<tr class="{"valid" if call.valid else "invalid"}"><td>{n}</td><td>{esc(call.name)}</td>'
            f"<td><code>{esc(_fmt(call.arguments))}</code></td><td>{esc(_fmt(call.box) if call.box else '')}</td>"
            f"<td>{esc(result)}</td></tr>"
        )
    head = "<tr><th>#</th><th>tool</th><th>arguments</th><th>box</th><th>result</th></tr>"
    return f'<h4>tool calls</h4><table class="calls">{head}{"".join(rows)}</table>'


def _card_info(card: Card) -> str:
    """The right-hand column: question, options, answers, reward breakdown, tool calls, other fields."""
    info = []
    if card.error:
        info.append(f'<p class="error">error: {esc(card.error)}</p>')
    if card.question:
        info.append(f'<p class="q">{esc(card.question)}</p>')
    if card.options:
        info.append(_options(card))
    if card.kind == "eval":
        answers = [("prediction", card.prediction), ("answer", card.answer)]
    else:
        answers = [("gts", card.answer)]
    if card.answer_text:
        answers.append(("answer text", card.answer_text))
    if card.step is not None:
        answers.append(("step", str(card.step)))
    info.append(_table(answers, "answers"))
    reward = dict(card.reward)
    if card.score is not None and "score" not in reward:
        reward = {"score": card.score, **reward}
    if reward:
        info.append("<h4>reward</h4>" + _table(((k, _fmt(v)) for k, v in reward.items()), "reward"))
    if card.tool_calls:
        info.append(_tool_calls(card))
    if card.other:
        info.append("<h4>other fields</h4>" + _table(((k, _fmt(v)[:500]) for k, v in card.other.items()), "other"))
    return "".join(info)


def _card_turns(card: Card, cache: _ImageCache) -> str:
    """The prompt (folded), then every turn in order with the images it received inline; tool images that no turn
    holds follow at the end, so every image of the record is shown exactly once."""
    produced_by = {
        call.image: f"call {n} {call.name}" + (f" {_fmt(call.box)}" if call.box else "")
        for n, call in enumerate(card.tool_calls, start=1)
        if call.image is not None
    }
    turns = []
    if card.prompt:
        turns.append(
            f'<details class="turn prompt"><summary>prompt ({len(card.prompt)} chars)</summary>'
            f"<pre>{esc(card.prompt)}</pre></details>"
        )
    shown: set[int] = set()
    for n, turn in enumerate(card.turns, start=1):
        images = "".join(_inline_image(card, i, cache, produced_by) for i in turn.images)
        images = f'<div class="imgs">{images}</div>' if images else ""
        shown.update(turn.images)
        turns.append(
            f'<section class="turn {esc(turn.role)}"><div class="role">{esc(turn.role)} · turn {n}</div>'
            f"<pre>{esc(turn.text)}</pre>{images}</section>"
        )
    if card.output and card.turns:
        turns.append(f'<details class="turn"><summary>whole output</summary><pre>{esc(card.output)}</pre></details>')
    elif card.output:
        turns.append(
            f'<section class="turn assistant"><div class="role">output</div><pre>{esc(card.output)}</pre></section>'
        )
    rest = [i for i in range(1, len(card.images)) if i not in shown]
    if rest:
        strip = "".join(_inline_image(card, i, cache, produced_by) for i in rest)
        turns.append(
            '<section class="turn tool"><div class="role">tool images not in a turn</div>'
            f'<div class="imgs">{strip}</div></section>'
        )
    return "".join(turns)


def render_card(card: Card, cache: _ImageCache) -> str:
    """One sample's ``<article>``; its ``data-*`` attributes are what the filters (and tests) read."""
    correct = {True: "true", False: "false", None: "unknown"}[card.correct]
    tool = {True: "used", False: "unused", None: "unknown"}[card.used_tool]
    return (
        f'<article class="card" data-benchmark="{esc(card.benchmark)}" data-correct="{correct}" data-tool="{tool}" '
        f'data-kind="{card.kind}" data-key="{esc(card.key)}">{_card_header(card)}<div class="grid">'
        f'<div class="side">{question_figure(card, cache)}</div><div class="info">{_card_info(card)}</div></div>'
        f'<div class="turns">{_card_turns(card, cache)}</div></article>'
    )


CSS = """
:root{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;font-size:14px;color:#1d1d1f;background:#f4f4f2}
body{margin:0 auto;max-width:1500px;padding:0 16px 40px}
h1{font-size:20px;margin:16px 0 4px} h4{margin:10px 0 4px;font-size:13px;color:#555}
[hidden]{display:none!important}
.filters{position:sticky;top:0;z-index:2;background:#f4f4f2;padding:8px 0;border-bottom:1px solid #ccc;
  display:flex;gap:12px;align-items:center;flex-wrap:wrap}
.filters select,.filters input{font:inherit;padding:2px 4px}
.protocol{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:0 12px;margin:4px 0;font-size:13px}
.protocol div{display:flex;gap:6px}.protocol dt{font-weight:600}.protocol dd{margin:0;word-break:break-all}
details>summary{cursor:pointer;color:#555}
.card{background:#fff;border:1px solid #d4d4d0;border-radius:6px;margin:14px 0;padding:10px 12px}
.card>header{display:flex;gap:6px;align-items:baseline;flex-wrap:wrap;border-bottom:1px solid #eee;padding-bottom:6px}
.bench{font-weight:600}.src{margin-left:auto;color:#888;font-size:12px}
.badge{border-radius:8px;padding:0 7px;background:#e8e8e4;font-size:12px}
.badge.ok{background:#cdebd3;color:#12501f}.badge.bad{background:#f5d3d6;color:#7a1422}
.grid{display:grid;grid-template-columns:minmax(260px,460px) 1fr;gap:16px;margin-top:8px}
svg.qimg{width:100%;height:auto;display:block;background:#eee}
svg.qimg rect.box{fill:none;stroke:""" + BOX_COLOUR + """;stroke-width:3px;vector-effect:non-scaling-stroke;
  shape-rendering:crispEdges}
svg.qimg text.boxlabel{fill:""" + BOX_COLOUR + """;font-weight:700}
svg.qimg rect.missing{fill:#ddd} svg.qimg text.missing{fill:#555}
figure{margin:0} figcaption{font-size:12px;color:#666}
.q{font-weight:600;margin:0 0 6px} .error{color:#8a1020;font-weight:600}
.options{margin:4px 0 8px;padding-left:4px;list-style:none}.options li.gold{background:#e3f4e6}
.mark{font-size:11px;border-radius:6px;padding:0 5px;margin-left:4px}
.mark.gold{background:#2f7d3d;color:#fff}.mark.pred{background:#2d5b9a;color:#fff}
table{border-collapse:collapse;font-size:13px} th,td{text-align:left;padding:1px 10px 1px 0;vertical-align:top}
table.calls td,table.calls th{border-bottom:1px solid #eee} tr.invalid td{color:#8a1020}
code{font-size:12px;word-break:break-all}
.turns{margin-top:8px}.turn{border-left:3px solid #bbb;margin:6px 0;padding:2px 8px}
.turn.assistant{border-color:#2d5b9a}.turn.tool{border-color:#b07d12}
.role{font-size:12px;color:#666}
pre{white-space:pre-wrap;word-break:break-word;margin:2px 0;font-size:12.5px;
  font-family:ui-monospace,Menlo,Consolas,monospace}
.imgs{display:flex;gap:8px;flex-wrap:wrap}
.toolimg img{max-width:360px;max-height:360px;border:1px solid #ccc;display:block}
.placeholder{width:220px;height:120px;background:#ddd;color:#555;display:flex;align-items:center;
  justify-content:center;text-align:center;font-size:12px;padding:4px}
@media (max-width:800px){.grid{grid-template-columns:1fr}}
"""

# The filters read the cards' data-* attributes and nothing else: no record data is ever inside the script.
SCRIPT = """
(function () {
  var cards = Array.prototype.slice.call(document.querySelectorAll("article.card"));
  var f = {benchmark: document.getElementById("f-benchmark"), only: document.getElementById("f-only"),
           tool: document.getElementById("f-tool"), q: document.getElementById("f-q")};
  var shown = document.getElementById("shown");
  function apply() {
    var n = 0, q = f.q.value.trim().toLowerCase();
    cards.forEach(function (c) {
      var ok = (!f.benchmark.value || c.dataset.benchmark === f.benchmark.value) &&
        (!f.only.value || c.dataset.correct === (f.only.value === "correct" ? "true" : "false")) &&
        (!f.tool.value || c.dataset.tool === f.tool.value) &&
        (!q || c.textContent.toLowerCase().indexOf(q) >= 0);
      c.hidden = !ok;
      if (ok) n++;
    });
    shown.textContent = String(n);
  }
  function save() {
    var p = new URLSearchParams();
    Object.keys(f).forEach(function (k) { if (f[k].value) p.set(k, f[k].value); });
    try {  // keeps a filtered view as a link; some browsers refuse it for file: pages, and the filters still work
      history.replaceState(null, "", p.toString() ? "#" + p.toString() : location.pathname + location.search);
    } catch (e) {}
  }
  var p = new URLSearchParams(location.hash.replace(/^#/, "") || location.search.replace(/^\\?/, ""));
  Object.keys(f).forEach(function (k) {
    if (p.has(k)) f[k].value = p.get(k);
    f[k].addEventListener(k === "q" ? "input" : "change", function () { apply(); save(); });
  });
  apply();
})();
"""


def _select(ident: str, label: str, options: Sequence[tuple[str, str]]) -> str:
    opts = "".join(f'<option value="{esc(v)}">{esc(t)}</option>' for v, t in options)
    return f'<label>{esc(label)} <select id="{ident}">{opts}</select></label>'


def _header(cards: Sequence[Card], files: Sequence[tuple[Path, int, str]], total: int, title: str) -> str:
    n = len(cards)
    correct = sum(1 for c in cards if c.correct)
    known = sum(1 for c in cards if c.correct is not None)
    tools = sum(1 for c in cards if c.used_tool)
    summary = [
        ("samples", f"{n}" + (f" (of {total} read; filtered on the command line)" if n != total else "")),
        ("correct", f"{correct} of {known} ({100 * correct / known:.1f}%)" if known else "not recorded"),
        ("used a tool", f"{tools} of {n}"),
        ("files", "; ".join(f"{path} ({count} {kind})" for path, count, kind in files)),
    ]
    steps = sorted({c.step for c in cards if c.step is not None})
    if steps:
        summary.append(("training steps", f"{steps[0]}–{steps[-1]}" if len(steps) > 1 else str(steps[0])))
    models = sorted({c.model for c in cards if c.model})
    if models:
        summary.append(("model", ", ".join(models)))
    protocols: dict[str, tuple[dict[str, Any], int]] = {}
    for card in cards:
        if card.protocol:
            key = json.dumps(card.protocol, sort_keys=True, default=str)
            protocols[key] = (card.protocol, protocols.get(key, (None, 0))[1] + 1)
    blocks = []
    for i, (protocol, count) in enumerate(protocols.values(), start=1):
        name = "protocol" if len(protocols) == 1 else f"protocol {i} of {len(protocols)} ({count} samples)"
        blocks.append(
            f"<details{' open' if len(protocols) == 1 else ''}><summary>{esc(name)}</summary>"
            + '<dl class="protocol">'
            + "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(_fmt(v))}</dd></div>" for k, v in protocol.items())
            + "</dl></details>"
        )
    benchmarks = sorted({c.benchmark for c in cards})
    filters = (
        '<nav class="filters">'
        + _select("f-benchmark", "benchmark", [("", "all")] + [(b, b) for b in benchmarks])
        + _select("f-only", "answer", [("", "all"), ("correct", "correct"), ("wrong", "wrong")])
        + _select("f-tool", "tool", [("", "all"), ("used", "used a tool"), ("unused", "no tool")])
        + '<label>search <input id="f-q" type="search" placeholder="text in a card"></label>'
        + f'<span class="count"><b id="shown">{n}</b> of <span id="total">{n}</span> shown</span></nav>'
    )
    return f"<h1>{esc(title)}</h1>" + _table(summary, "summary") + "".join(blocks) + filters


def render_html(
    cards: Sequence[Card],
    files: Sequence[tuple[Path, int, str]] = (),
    *,
    title: str = "visionr3 report",
    total: int | None = None,
) -> str:
    """The whole report as one string (see the module docstring for what it guarantees)."""
    cache = _ImageCache()
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with verl
        tqdm = None
    iterator = tqdm(cards, desc="visionr3 view", unit="sample", disable=None, file=sys.stderr) if tqdm else cards
    body = "".join(render_card(card, cache) for card in iterator)
    script_hash = base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode("ascii")
    csp = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    empty = "" if cards else '<p class="note">No samples to show.</p>'
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        + _header(cards, files, len(cards) if total is None else total, title)
        + f'<main id="cards">{body}{empty}</main><script>{SCRIPT}</script></body></html>\n'
    )


@dataclass(frozen=True)
class ReportStats:
    """What :func:`build_report` wrote: the command line prints it as its one-line summary."""

    path: Path
    shown: int
    total: int
    correct: int
    used_tool: int
    files: int
    bytes: int


def build_report(
    inputs: Sequence[str | Path] | str | Path,
    out: str | Path,
    *,
    title: str | None = None,
    benchmark: str | Sequence[str] | None = None,
    only: str | None = None,
    tool: str | None = None,
    limit: int | None = None,
) -> ReportStats:
    """Read ``inputs`` (files or folders), keep what the filters select, write the HTML to ``out``."""
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not inputs:
        raise ViewError("no input files given")
    cards, files = load_cards(inputs)
    chosen = select(cards, benchmark=benchmark, only=only, tool=tool, limit=limit)
    title = title or f"visionr3 report: {', '.join(Path(p).name or str(p) for p in inputs)}"
    page = render_html(chosen, files, title=title, total=len(cards))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return ReportStats(
        path=out,
        shown=len(chosen),
        total=len(cards),
        correct=sum(1 for c in chosen if c.correct),
        used_tool=sum(1 for c in chosen if c.used_tool),
        files=len(files),
        bytes=len(page.encode("utf-8")),
    )


def write_report(inputs: Sequence[str | Path] | str | Path, out: str | Path, **filters: Any) -> Path:
    """:func:`build_report`, returning the written path (``filters``: ``title``, ``benchmark``, ``only``, ``tool``,
    ``limit``)."""
    return build_report(inputs, out, **filters).path


def configure(parser: argparse.ArgumentParser) -> None:
    """``visionr3 view`` arguments."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  visionr3 view outputs/eval/results.jsonl --out report.html\n"
        "  visionr3 view results.jsonl --only wrong --tool used --benchmark vstar --limit 50\n"
        "  visionr3 view checkpoints/run1/rollouts/ --out rollouts.html   # trainer.rollout_data_dir\n"
        "open report.html#only=wrong&tool=used to start with the page's own filters set"
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="eval results JSONL, verl rollout dump JSONL, or a folder of them"
    )
    parser.add_argument("--out", "-o", default="report.html", help="the HTML file to write (default: report.html)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="at most N samples (after the filters)")
    parser.add_argument("--benchmark", action="append", metavar="NAME", help="only this benchmark (repeatable)")
    parser.add_argument("--only", choices=("correct", "wrong"), default=None, help="only correct or only wrong samples")
    parser.add_argument("--tool", choices=("used", "unused"), help="only samples that used a tool, or did not")
    parser.add_argument("--title", default=None, help="the report's title (default: the input names)")


def run(args: argparse.Namespace) -> int:
    """Exit codes: 0 written, 2 an input (or filter) problem, stated in one line."""
    try:
        stats = build_report(
            args.inputs, args.out, title=args.title, benchmark=args.benchmark, only=args.only, tool=args.tool,
            limit=args.limit,
        )
    except (ViewError, ValueError) as error:
        print(f"visionr3 view: error: {error}", file=sys.stderr)
        return 2
    print(stats.path)
    print(
        f"visionr3 view: {stats.shown} of {stats.total} samples from {stats.files} file(s) "
        f"({stats.correct} correct, {stats.used_tool} used a tool), "
        + (f"{stats.bytes / 1e6:.1f} MB" if stats.bytes >= 1e6 else f"{stats.bytes / 1e3:.0f} kB")
    )
    return 0


__all__ = [
    "BOX_COLOUR",
    "MAX_SIDE",
    "Card",
    "Embedded",
    "ReportStats",
    "ViewError",
    "box_rect",
    "build_report",
    "configure",
    "embed_image",
    "load_cards",
    "render_html",
    "run",
    "select",
    "write_report",
]
