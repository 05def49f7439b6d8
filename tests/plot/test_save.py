from __future__ import annotations

import io
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import matplotlib
import pytest

from normviz.plot.save import FORMATS, parse_formats, save_all, save_figure
from normviz.plot.style import style_context

# Built the same way in this process and in the subprocess test below.
FIGURE_CODE = textwrap.dedent(
    """
    import numpy as np
    from normviz.plot.palette import kind_color, kind_linestyle, kind_marker
    from normviz.plot.style import new_figure, style_context

    def make_figure():
        with style_context("paper"):
            fig = new_figure("paper", nrows_hint=2)
            ax1, ax2 = fig.subplots(2, 1)
            x = np.linspace(0.0, 1.0, 20)
            for i, kind in enumerate(["batch", "layer", "none", "dyt"]):
                ax1.plot(x, np.sin(x * (i + 1)), color=kind_color(kind),
                         linestyle=kind_linestyle(kind), marker=kind_marker(kind),
                         label=kind)
            ax1.set_xlabel("step")
            ax1.set_ylabel(r"$\\|g\\|_2$")
            ax1.legend(title="norm")
            ax2.imshow(np.arange(12.0).reshape(3, 4), aspect="auto")
            ax2.set_title("gradient flow")
        return fig
    """
)
_namespace: dict = {}
exec(FIGURE_CODE, _namespace)  # noqa: S102 - our own code, shared with a subprocess
make_figure = _namespace["make_figure"]


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def save_in_style(fig, path, fmt, **kwargs):
    with style_context("paper"):
        return save_figure(fig, path, fmt, **kwargs)


# --- parse_formats ----------------------------------------------------------


def test_formats():
    assert FORMATS == ("png", "pdf", "svg", "pgf")


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("png,pdf", ("png", "pdf")),
        (" PDF , .svg,", ("pdf", "svg")),
        ("pdf,png,pdf", ("pdf", "png")),
        (["svg", "pgf"], ("svg", "pgf")),
        (("png",), ("png",)),
    ],
)
def test_parse_formats(spec, expected):
    assert parse_formats(spec) == expected


@pytest.mark.parametrize("spec", ["png,jpg", "eps", ["pdf", "tiff"]])
def test_parse_formats_names_the_bad_format(spec):
    with pytest.raises(ValueError) as info:
        parse_formats(spec)
    bad = [
        s
        for s in (spec.split(",") if isinstance(spec, str) else spec)
        if s not in FORMATS
    ]
    assert repr(bad[0]) in str(info.value)
    assert "png, pdf, svg, pgf" in str(info.value)


@pytest.mark.parametrize("spec", ["", " , ", []])
def test_parse_formats_rejects_empty(spec):
    with pytest.raises(ValueError, match="no figure format"):
        parse_formats(spec)


# --- determinism ------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "pdf", "svg"])
def test_same_figure_saved_twice_is_byte_identical(tmp_path, monkeypatch, fmt):
    # Two different SOURCE_DATE_EPOCH values stand in for saves at different
    # times: matplotlib stamps PDF and SVG with that date unless it is pinned.
    fig = make_figure()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    a = save_in_style(fig, tmp_path / f"a.{fmt}", fmt).read_bytes()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    b = save_in_style(fig, tmp_path / f"b.{fmt}", fmt).read_bytes()
    assert a == b
    # A figure built again from scratch gives the same bytes too.
    c = save_in_style(make_figure(), tmp_path / f"c.{fmt}", fmt).read_bytes()
    assert a == c


@pytest.mark.parametrize("fmt", ["pdf", "svg"])
def test_plain_savefig_is_not_deterministic(tmp_path, monkeypatch, fmt):
    # Control for the test above: without save_figure the bytes do change,
    # so identical bytes there are the work of save_figure.
    fig = make_figure()
    out = []
    for epoch in ("0", "1700000000"):
        monkeypatch.setenv("SOURCE_DATE_EPOCH", epoch)
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt)
        out.append(buf.getvalue())
    assert out[0] != out[1]


def test_svg_clip_ids_resolve_and_differ_between_figures(tmp_path):
    svg = save_in_style(make_figure(), tmp_path / "a.svg", "svg").read_text(
        encoding="utf-8"
    )
    defined = re.findall(r'<clipPath id="([^"]+)">', svg)
    used = set(re.findall(r"url\(#([^)]+)\)", svg))
    assert defined and len(defined) == len(set(defined))
    assert used == set(defined)
    fig = make_figure()
    fig.axes[0].set_xlabel("another label")
    other = save_in_style(fig, tmp_path / "b.svg", "svg").read_text(encoding="utf-8")
    assert not set(defined) & set(re.findall(r'<clipPath id="([^"]+)">', other))


def test_metadata_is_pinned(tmp_path):
    fig = make_figure()
    with matplotlib.rc_context({"pdf.compression": 0}):
        pdf = save_in_style(fig, tmp_path / "f.pdf", "pdf").read_bytes()
    assert b"/CreationDate" not in pdf
    assert b"/Creator (normviz)" in pdf and b"/Producer (normviz)" in pdf
    png = save_in_style(fig, tmp_path / "f.png", "png").read_bytes()
    assert b"Software" not in png and b"Matplotlib" not in png
    svg = save_in_style(fig, tmp_path / "f.svg", "svg").read_text(encoding="utf-8")
    assert "<dc:date>" not in svg and "normviz" in svg


def test_deterministic_across_processes(tmp_path):
    # Fresh interpreter, different hash seed: same bytes as in this process.
    script = FIGURE_CODE + textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from normviz.plot.save import save_all
        from normviz.plot.style import style_context
        fig = make_figure()
        with style_context("paper"):
            save_all(fig, Path(sys.argv[1]) / "fig", "png,pdf,svg")
        """
    )
    other = tmp_path / "other"
    env = {
        **os.environ,
        "PYTHONHASHSEED": "12345",
        "MPLBACKEND": "Agg",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    env.pop("SOURCE_DATE_EPOCH", None)
    subprocess.run(
        [sys.executable, "-c", script, str(other)], check=True, env=env, timeout=120
    )
    fig = make_figure()
    with style_context("paper"):
        mine = save_all(fig, tmp_path / "fig", "png,pdf,svg")
    for path in mine:
        assert path.read_bytes() == (other / path.name).read_bytes(), path.name


# --- publishing -------------------------------------------------------------


def test_pdf_embeds_truetype_not_type3(tmp_path):
    fig = make_figure()
    with matplotlib.rc_context({"pdf.compression": 0}):
        data = save_in_style(fig, tmp_path / "f.pdf", "pdf").read_bytes()
    assert b"/Type3" not in data
    assert b"/TrueType" in data or b"/CIDFontType2" in data


def test_pdf_is_truetype_even_when_caller_asks_for_type3(tmp_path):
    fig = make_figure()
    with matplotlib.rc_context({"pdf.compression": 0, "pdf.fonttype": 3}):
        data = save_figure(fig, tmp_path / "f.pdf", "pdf").read_bytes()
        assert matplotlib.rcParams["pdf.fonttype"] == 3  # restored after saving
    assert b"/Type3" not in data


def test_png_size_follows_style_dpi_or_argument(tmp_path):
    fig = make_figure()

    def png_width(path: Path) -> int:
        return struct.unpack(">I", path.read_bytes()[16:20])[0]

    assert png_width(save_in_style(fig, tmp_path / "a.png", "png")) == round(3.25 * 300)
    assert png_width(save_figure(fig, tmp_path / "b.png", "png", dpi=100)) == 325


def test_saving_leaves_rcparams_unchanged(tmp_path):
    fig = make_figure()
    before = {k: v for k, v in matplotlib.rcParams.items() if k != "backend"}
    save_all(fig, tmp_path / "f", "png,pdf,svg")
    assert {k: v for k, v in matplotlib.rcParams.items() if k != "backend"} == before


# --- files and atomicity ----------------------------------------------------


def test_save_all_names_and_leaves_no_temporaries(tmp_path):
    fig = make_figure()
    with style_context("paper"):
        paths = save_all(fig, tmp_path / "sub" / "run.v2", "svg,png,pdf")
    assert paths == [
        tmp_path / "sub" / f"run.v2.{fmt}" for fmt in ("svg", "png", "pdf")
    ]
    assert listing(tmp_path / "sub") == ["run.v2.pdf", "run.v2.png", "run.v2.svg"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_save_figure_accepts_str_path_and_returns_path(tmp_path):
    out = save_figure(make_figure(), str(tmp_path / "f.png"), ".PNG")
    assert out == tmp_path / "f.png" and out.is_file()


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_saved_file_gets_ordinary_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        path = save_figure(make_figure(), tmp_path / "f.png", "png")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_unknown_format_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="'jpg'"):
        save_figure(make_figure(), tmp_path / "f.jpg", "jpg")
    assert listing(tmp_path) == []


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_failing_savefig_leaves_no_file(tmp_path, monkeypatch, error):
    fig = make_figure()

    def broken_savefig(fname, **kwargs):
        fname.write(b"half a figure")
        raise error

    monkeypatch.setattr(fig, "savefig", broken_savefig)
    with pytest.raises(type(error)):
        save_figure(fig, tmp_path / "f.pdf", "pdf")
    assert listing(tmp_path) == []


def test_failing_savefig_keeps_old_content(tmp_path, monkeypatch):
    fig = make_figure()
    path = save_figure(fig, tmp_path / "f.png", "png")
    old = path.read_bytes()

    def broken_savefig(fname, **kwargs):
        fname.write(b"half a figure")
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(fig, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        save_figure(fig, path, "png")
    assert path.read_bytes() == old
    assert listing(tmp_path) == ["f.png"]


# --- pgf --------------------------------------------------------------------


def test_pgf_without_latex_gives_clear_error(tmp_path):
    if shutil.which(matplotlib.rcParams["pgf.texsystem"]):
        pytest.skip("a LaTeX installation is present")
    with pytest.raises(RuntimeError, match="^pgf output needs a LaTeX installation: "):
        save_figure(make_figure(), tmp_path / "f.pgf", "pgf")
    assert listing(tmp_path) == []


def test_pgf_with_latex(tmp_path):
    if not shutil.which(matplotlib.rcParams["pgf.texsystem"]):
        pytest.skip("no LaTeX installation")
    path = save_in_style(make_figure(), tmp_path / "f.pgf", "pgf")
    assert listing(tmp_path) == ["f-img0.png", "f.pgf"]
    assert "f-img0.png" in path.read_text(encoding="utf-8")


def test_pgf_raster_companions_are_moved_beside_the_pgf(tmp_path, monkeypatch):
    # Stand-in for the pgf backend, which writes "<stem>-img<N>.png" next to
    # the file it was given and names them in the .pgf.
    fig = make_figure()

    def fake_pgf_savefig(fname, **kwargs):
        target = Path(fname)
        assert target.name == "f.pgf"  # written under its final name
        (target.parent / "f-img0.png").write_bytes(b"png")
        target.write_text("\\includegraphics{f-img0.png}", encoding="utf-8")

    monkeypatch.setattr(fig, "savefig", fake_pgf_savefig)
    path = save_figure(fig, tmp_path / "f.pgf", "pgf")
    assert listing(tmp_path) == ["f-img0.png", "f.pgf"]
    assert path.read_text(encoding="utf-8") == "\\includegraphics{f-img0.png}"


def test_failing_pgf_leaves_nothing(tmp_path, monkeypatch):
    fig = make_figure()

    def broken(fname, **kwargs):
        Path(fname).write_text("half", encoding="utf-8")
        (Path(fname).parent / "f-img0.png").write_bytes(b"png")
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises((OSError, RuntimeError)):
        save_figure(fig, tmp_path / "f.pgf", "pgf")
    assert listing(tmp_path) == []
