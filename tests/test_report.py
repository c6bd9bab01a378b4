"""`mnistdiff report` and `mnistdiff runs --html`: every section, every embedded string escaped,
the same bytes when written twice, and damaged runs reported for what they lack."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from urllib.parse import quote, unquote

import pytest
from typer.testing import CliRunner

from mnist_diffusion.cli import app
from mnist_diffusion.report.run_report import SECTIONS, run_report
from mnist_diffusion.runs.store import verify_manifest

runner = CliRunner()
HOSTILE = "<script>alert('x')</script>"


@pytest.fixture
def artifacts(tiny_run, tmp_path):
    """A copy of the shared tiny run's artifacts folder: (artifacts, run folder)."""
    copy = tmp_path / "artifacts"
    shutil.copytree(tiny_run[0], copy)
    return copy, copy / "runs" / tiny_run[1].name


def report(run_dir, artifacts) -> str:
    result = runner.invoke(app, ["report", "--run", str(run_dir), "--artifacts-dir", str(artifacts)])
    assert result.exit_code == 0, result.output
    return (run_dir / "report.html").read_text()


def fetches(page: str) -> list[str]:
    """Every URL the page would fetch or link to outside itself (data: URIs and anchors aside)."""
    urls = re.findall(r'(?:src|href)="([^"]*)"', page) + re.findall(r"url\(([^)]*)\)", page)
    return [u for u in urls if not u.startswith(("data:image/png;base64,", "#"))]


def test_train_writes_the_report_and_it_holds_every_section(artifacts):
    artifacts, run_dir = artifacts
    page = (run_dir / "report.html").read_text()  # written by `train` at the end of the run
    for anchor, heading, _ in SECTIONS:
        assert f'<section id="{anchor}"><h2>{heading}</h2>' in page
    command = json.loads((run_dir / "run.json").read_text())["command"]  # under pytest, pytest's command line
    for text in (
        f"<pre><code>{html.escape(command)}</code></pre>",
        "model.channel_mult",
        'class="diff"',
        "CPU bf16 units",
        "torch threads",
        "samples.png: drawn at the end",
        "denoising trajectory",
        "40 k-means clusters",
        "Not evaluated yet",
        "model.safetensors",
        "No samples taken during training",
    ):
        assert text in page, text
    assert page.count("data:image/png;base64,") == 3  # the curves, samples.png, the trajectory
    assert fetches(page) == [] and "<script" not in page
    assert set(verify_manifest(run_dir).values()) == {"ok"}  # the report is no file of the manifest


def test_the_report_is_the_same_bytes_when_written_twice(artifacts):
    artifacts, run_dir = artifacts
    first = report(run_dir, artifacts)
    assert report(run_dir, artifacts) == first
    assert first == (run_dir / "report.html").read_text()


def test_every_string_from_the_run_is_escaped(artifacts, data_dir):
    artifacts, run_dir = artifacts
    result = runner.invoke(
        app,
        [
            "eval",
            "--run",
            str(run_dir),
            "-n",
            "10",
            "--steps",
            "2",
            "--data-dir",
            str(data_dir),
            "--artifacts-dir",
            str(artifacts),
        ],
    )
    assert result.exit_code == 0, result.output
    info = json.loads((run_dir / "run.json").read_text())
    info.update(command=f"mnistdiff train {HOSTILE}", created=HOSTILE, parent={"run": HOSTILE, "step": HOSTILE})
    (run_dir / "run.json").write_text(json.dumps(info))
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "preset": HOSTILE}))  # printable: a valid config
    scores = json.loads((run_dir / "eval.json").read_text())
    scores["sampling"][HOSTILE] = HOSTILE
    scores.update(date=HOSTILE, device=HOSTILE)
    (run_dir / "eval.json").write_text(json.dumps(scores))
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 5, "loss": HOSTILE, "fid": HOSTILE}) + "\n" + HOSTILE + "\n")
    hostile_dir = run_dir.rename(run_dir.parent / f"00009-{HOSTILE.replace('/', '|')}")
    page = report(hostile_dir, artifacts)
    assert "<script" not in page and "'x'" not in page
    assert page.count("&lt;script&gt;alert(&#x27;x&#x27;)&lt;") >= 8  # each one shown as text
    assert fetches(page) == [f"../{quote(HOSTILE, safe='')}/report.html"]  # the parent's link, URL-encoded
    assert "FID (lower is better)" in page and "class histogram" in page


def test_a_damaged_run_gets_a_report_that_says_what_is_missing(artifacts):
    artifacts, run_dir = artifacts
    for name in ("samples.png", "model.safetensors"):
        (run_dir / name).unlink()
    (run_dir / "eval.json").write_text("{not json")
    (run_dir / "clusters.safetensors").write_bytes(b"garbage")
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "loss": 0.1\n')  # cut short by a crash
    page = report(run_dir, artifacts)
    start = page.index('class="problems"')
    problems = page[start : page.index("</div>", start)]
    for text in (
        "samples.png: listed in the manifest, but missing",
        "model.safetensors: listed in the manifest",
        "eval.json is not valid JSON",
        "metrics.jsonl: 1 of its 3 lines are not JSON objects",
        "clusters.safetensors: changed since the manifest",
        "clusters.safetensors is",
    ):
        assert text in problems, text
    assert "No trajectory: run" in page and "has no model.safetensors yet" in page

    (run_dir / "config.json").write_text('{"preset": "default", "model": ')
    for name in ("run.json", "checkpoint.json", "metrics.jsonl", "manifest.json"):
        (run_dir / name).unlink()
    page = report(run_dir, artifacts)
    for text in (
        "config.json is not valid JSON",
        "run.json is missing",
        "checkpoint.json is missing",
        "metrics.jsonl is missing",
        "manifest.json cannot be read",
        "The config cannot be shown",
        "No training figures",
    ):
        assert text in page, text


def test_report_of_an_unknown_run_is_one_line(artifacts):
    artifacts, _ = artifacts
    result = runner.invoke(app, ["report", "--run", "nope", "--artifacts-dir", str(artifacts)])
    assert result.exit_code == 1 and result.output.startswith("Error: unknown run 'nope'")


def test_runs_html_lists_every_run_unreadable_ones_too(artifacts):
    artifacts, run_dir = artifacts
    broken = run_dir.parent / "00007-broken"
    broken.mkdir()
    (broken / "config.json").write_text(f'{{"preset": "{HOSTILE}"')
    result = runner.invoke(app, ["runs", "--html", "--artifacts-dir", str(artifacts)])
    assert result.exit_code == 0, result.output
    page = (artifacts / "index.html").read_text()
    rows = re.findall(r'<tr data-run="([^"]+)">', page)
    assert rows == [run_dir.name, "00007-broken"]
    assert f'href="runs/{run_dir.name}/report.html"' in page
    assert "no report yet: mnistdiff report --run 00007-broken" in page
    assert "unreadable" in page and "config.json is not valid JSON" in page
    assert page.count("<script") == 1 and HOSTILE not in page  # the sort script, nothing from the runs
    assert fetches(page) == [f"runs/{run_dir.name}/report.html"]
    assert page.count("data:image/png;base64,") == 1  # the one thumbnail: the broken run has no samples


def test_runs_html_in_a_missing_folder_is_one_line(tmp_path):
    result = runner.invoke(app, ["runs", "--html", "--artifacts-dir", str(tmp_path / "none")])
    assert result.exit_code == 1 and result.output.startswith("Error: no artifacts folder")


def test_run_report_names_the_run(artifacts):
    _, run_dir = artifacts
    assert f"<h1>{run_dir.name}</h1>" in run_report(run_dir)


def test_a_report_that_cannot_be_written_is_a_warning_not_a_failed_training(tmp_path, data_dir, monkeypatch):
    from conftest import TINY_FLAGS

    from mnist_diffusion.report import run_report as module

    def fail(run_dir):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, "write_report", fail)
    result = runner.invoke(
        app, ["train", *TINY_FLAGS, "--max-steps", "2", "--data-dir", str(data_dir), "--artifacts-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "model.safetensors").is_file() and not (run_dir / "report.html").exists()
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: the run is saved, but its report could not be written: [Errno 28] No space left on device"
    ]


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"), reason="POSIX only")
@pytest.mark.parametrize("kind", ["link to /dev/zero", "link to a file", "FIFO"])
def test_the_report_reads_no_file_that_is_not_a_regular_file(artifacts, kind):
    artifacts, run_dir = artifacts
    names = ("run.json", "checkpoint.json", "metrics.jsonl", "samples.png", "manifest.json")
    for name in names:
        path = run_dir / name
        if kind == "link to a file":  # the same bytes, from outside the run folder
            target = artifacts / f"elsewhere-{name}"
            target.write_bytes(path.read_bytes())
        path.unlink()
        if kind == "FIFO":
            os.mkfifo(path)
        else:
            path.symlink_to(target if kind == "link to a file" else "/dev/zero")
    page = report(run_dir, artifacts)
    what = "a FIFO" if kind == "FIFO" else "a symbolic link"
    for name in names[:3]:
        assert f"{name} cannot be read ({what}" in page, name
    assert f"manifest.json cannot be read: {what}" in page
    assert "No end-of-run grid" in page and "run.json is missing or unreadable" in page


def test_report_writes_into_a_run_folder_only(artifacts, tmp_path):
    artifacts, run_dir = artifacts
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"jpeg")
    for folder in (other, artifacts, artifacts / "runs"):
        result = runner.invoke(app, ["report", "--run", str(folder), "--artifacts-dir", str(artifacts)])
        assert result.exit_code == 1 and result.output.startswith(f"Error: {folder} is not a run folder"), result.output
        assert len(result.output.strip().splitlines()) == 1 and not (folder / "report.html").exists()
    (run_dir / "config.json").unlink()  # a run folder no more
    result = runner.invoke(app, ["report", "--run", str(run_dir), "--artifacts-dir", str(artifacts)])
    assert result.exit_code == 1 and "is not a run folder" in result.output, result.output


@pytest.mark.parametrize("name", ["00005-a#b", "00005-100%", "00005-a?b=c", "00005-x%23y"])
def test_links_to_runs_named_with_url_characters_are_encoded(artifacts, name):
    artifacts, run_dir = artifacts
    info = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**info, "parent": {"run": name, "step": 2}}))
    page = report(run_dir, artifacts)
    assert fetches(page) == [f"../{quote(name, safe='')}/report.html"]  # the parent's link
    renamed = run_dir.rename(run_dir.parent / name)
    report(renamed, artifacts)
    result = runner.invoke(app, ["runs", "--html", "--artifacts-dir", str(artifacts)])
    assert result.exit_code == 0, result.output
    (link,) = fetches((artifacts / "index.html").read_text())
    assert link == f"runs/{quote(name, safe='')}/report.html" and "#" not in link and "?" not in link
    assert unquote(link.split("/")[1]) == name


def test_the_section_links_wrap_on_a_narrow_screen(artifacts):
    from mnist_diffusion.report.html import STYLE

    page = run_report(artifacts[1])
    assert re.search(r"<nav>(<a [^>]*>[^<]*</a>){4,}</nav>", page)  # the links, with no space to break at
    (nav,) = re.findall(r"^nav \{([^}]*)\}", STYLE, flags=re.M)
    assert "display: flex" in nav and "flex-wrap: wrap" in nav, nav  # so they wrap between the links


def visible_labels(ax):
    return [t for t in ax.get_yticklabels(which="both") if t.get_visible() and t.get_text()]


def test_the_loss_charts_y_labels_do_not_overlap():
    from mnist_diffusion.report.charts import curves_figure, log_ticks

    assert log_ticks(0.03, 1.0) == [0.05, 0.1, 0.2, 0.5, 1.0]
    assert log_ticks(0.05, 0.12) == [0.05, 0.06, 0.07, 0.08, 0.09, 0.1]
    assert log_ticks(0.3, 0.33) == [0.3, 0.31, 0.32, 0.33] and log_ticks(0.5, 0.5) == [0.5]
    assert log_ticks(1e-5, 10.0) == [1e-5, 1e-3, 0.1, 10.0]  # at most 6: every other power of ten
    assert log_ticks(0.0275, 0.273) == [0.03, 0.05, 0.1, 0.2] and log_ticks(0.002, 3.0) == [0.01, 0.1, 1.0]
    for low, high in ((0.03, 1.0), (0.25, 0.4), (0.3, 0.33), (0.002, 3.0)):
        records = [{"step": s, "loss": high * (low / high) ** (s / 99), "lr": 1e-3} for s in range(100)]
        fig = curves_figure(records)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        loss_axes = fig.axes[0]
        assert loss_axes.get_yscale() == "log"
        labels = visible_labels(loss_axes)
        assert len(labels) >= 3, [t.get_text() for t in labels]
        boxes = [t.get_window_extent(renderer) for t in labels]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert not a.overlaps(b), (low, high, [t.get_text() for t in labels])


def test_the_class_histograms_legend_covers_no_bar():
    from mnist_diffusion.report.charts import histogram_figure

    tall = [100, 90, 95, 110, 100, 105, 98, 130, 125, 140]  # tall bars at 7-9, where a legend would sit
    fig = histogram_figure(tall, [98, 112, 99, 102, 97, 90, 99, 104, 97, 101])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    legend = ax.get_legend().get_window_extent(renderer)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["samples", "real data (the floor)"]
    assert not legend.overlaps(ax.get_window_extent(renderer))  # outside the axes, where no bar is
    assert all(not legend.overlaps(bar.get_window_extent(renderer)) for bar in ax.patches)
    assert fig.bbox.contains(legend.x0, legend.y0) and fig.bbox.contains(legend.x1, legend.y1)  # and on the page
