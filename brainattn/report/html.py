"""The report page: one self-contained HTML file (inline CSS, figures as base64 data URIs).

Nothing in the page refers to another file or the network, so it opens offline and can be
mailed as it is. A small inline script records, once the page has loaded, every image's
natural size in ``<html data-img-sizes="WxH,...">`` and any script or image error in
``data-errors``: the browser test reads them back from the DOM.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html as _html

from brainattn.report.figures import Section

DASH = "\u2013"

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#1d1d1f;
background:#fafafa;line-height:1.45}
header{background:#20344a;color:#fff;padding:18px 32px}
header h1{margin:0 0 4px 0;font-size:24px}
header p{margin:2px 0;font-size:13px;color:#d6e2ee}
nav{padding:8px 32px;background:#e8eef4;font-size:14px}
nav a{margin-right:18px;color:#20344a;text-decoration:none;font-weight:600}
main{padding:8px 32px 40px 32px;max-width:1400px}
section{background:#fff;border:1px solid #e1e4e8;border-radius:6px;padding:8px 20px 16px 20px;
margin:18px 0}
h2{font-size:20px;border-bottom:1px solid #e1e4e8;padding-bottom:4px}
p.lead{max-width:950px;color:#333}
figure{margin:14px 0;display:inline-block;max-width:100%;vertical-align:top}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:13px;color:#555;max-width:900px}
table.tbl{border-collapse:collapse;font-size:12px;margin:6px 0 14px 0}
table.tbl th,table.tbl td{border:1px solid #d0d7de;padding:3px 7px;text-align:right}
table.tbl th{background:#f0f3f6}
div.tablecap,summary.tablecap{font-size:13px;font-weight:600;margin-top:10px}
summary.tablecap{cursor:pointer}
div.missing{background:#fff4e5;border-left:4px solid #f0a020;padding:6px 10px;margin:6px 0;
font-size:13px}
pre{font-size:12px;background:#f6f8fa;padding:8px;overflow-x:auto}
table.prov td,table.prov th{font-size:12px;text-align:left}
"""

SCRIPT = """
(function(){
  var errs=[];
  function note(msg){errs.push(msg);
    document.documentElement.setAttribute('data-errors', errs.join(' | '));}
  window.addEventListener('error', function(e){
    var t=e.target;
    if(t && t.tagName==='IMG'){note('image failed: '+(t.alt||'?'));}
    else{note(String(e.message||'script error'));}
  }, true);
  window.addEventListener('load', function(){
    var s=[], imgs=document.images;
    for(var i=0;i<imgs.length;i++){s.push(imgs[i].naturalWidth+'x'+imgs[i].naturalHeight);}
    document.documentElement.setAttribute('data-img-sizes', s.join(','));
    document.documentElement.setAttribute('data-loaded', '1');
    console.log('brainattn report loaded: '+imgs.length+' images');
  });
})();
"""


def _esc(x) -> str:
    return _html.escape(str(x), quote=True)


def table_html(obj) -> str:
    """A DataFrame (or ready HTML string) as a compact table."""
    if isinstance(obj, str):
        return obj
    import numpy as np

    def fmt(x):
        if isinstance(x, (float, np.floating)):
            return "\u2013" if not np.isfinite(x) else f"{x:.4g}"
        return str(x)

    return obj.to_html(classes="tbl", border=0, na_rep="\u2013", float_format=fmt,
                       index=obj.index.name is not None)


#: tables longer than this many rows are folded (click to open)
FOLD_ROWS = 15


def table_block(caption: str, tbl) -> str:
    """A captioned table; long ones folded into a ``<details>`` element."""
    body = table_html(tbl)
    n = body.count("<tr")
    if n > FOLD_ROWS:
        return (f'<details><summary class="tablecap">{_esc(caption)} ({n - 1} rows)</summary>'
                f"{body}</details>")
    return f'<div class="tablecap">{_esc(caption)}</div>{body}'


def img_tag(fig) -> str:
    b64 = base64.b64encode(fig.png).decode("ascii")
    w, h = fig.size_px
    return (f'<figure id="fig-{_esc(fig.name)}"><img alt="{_esc(fig.name)}" '
            f'width="{w}" height="{h}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{_esc(fig.caption)}</figcaption></figure>")


def provenance_table(rows: list[dict]) -> str:
    if not rows:
        return '<p class="lead">No provenance attributes found in the result files.</p>'
    cols = ["file", "brainattn_version", "command", "seed", "created_utc", "device"]
    head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{_esc(r.get(c, DASH))}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    return f'<table class="tbl prov"><tr>{head}</tr>{body}</table>'


def section_html(sec: Section) -> str:
    parts = [f'<section id="{_esc(sec.kind)}"><h2>{_esc(sec.title)}</h2>',
             f'<p class="lead">{_esc(sec.text)}</p>']
    for note in sec.missing:
        parts.append(f'<div class="missing"><b>missing:</b> {_esc(note)}</div>')
    tables = [table_block(cap, tbl) for cap, tbl in sec.tables]
    figures = [img_tag(fig) for fig in sec.figures]
    parts.extend(tables + figures if sec.tables_first else figures + tables)
    if not sec.figures and not sec.tables and not sec.missing:
        parts.append('<div class="missing">nothing to draw in this section</div>')
    parts.append("</section>")
    return "\n".join(parts)


def page(sections: list[Section], *, title: str, roots: list[str]) -> str:
    """The whole HTML document."""
    from brainattn import __version__

    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    prov = [row for s in sections for row in s.provenance]
    nav = "".join(f'<a href="#{_esc(s.kind)}">{_esc(s.title)}</a>' for s in sections)
    body = "\n".join(section_html(s) for s in sections)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title>
<style>{CSS}</style>
<script>{SCRIPT}</script>
</head>
<body>
<header><h1>{_esc(title)}</h1>
<p>runs: {_esc(", ".join(roots))}</p>
<p>report written by brainattn {_esc(__version__)} on {_esc(now)}</p></header>
<nav><a href="#provenance">Provenance</a>{nav}</nav>
<main>
<section id="provenance"><h2>Provenance</h2>
<p class="lead">Where each result came from: the brainattn version, the command line, the seed,
the time (UTC) and the device, as stamped in each result file.</p>
{provenance_table(prov)}
</section>
{body}
</main>
</body>
</html>
"""
