"""Issue 14: the stages' thread count in their cache key; the recipe's description escaped in the report."""

from __future__ import annotations

import dataclasses
import os

from rlhfkit import artifacts
from rlhfkit.recipe import fingerprint, load_recipe

RECIPE = """
name = "keys"
description = "{description}"
[data]
name = "synthetic"
[[models]]
name = "llama-tiny"
policy = "llama:tiny"
[grid]
algorithms = ["ppo"]
memory = ["full"]
seeds = [1]
[run]
{run}
"""


def _recipe(tmp_path, run="", description="d"):
    path = tmp_path / f"r{abs(hash((run, description)))}.toml"
    path.write_text(RECIPE.format(run=run, description=description))
    return load_recipe(path)


def _keys_before_threads(recipe, entry, root):
    """The keys as computed before the thread count entered them (what existing run directories hold)."""
    data = {"data": recipe.stage_fingerprint()["data"], "data_seed": recipe.run.data_seed}
    tok = fingerprint({**data, "tokenizer_from": entry.policy})
    return (root / f"tokenizer-{tok}",
            root / f"sft-{fingerprint({**data, 'tokenizer': tok, 'policy': entry.policy, 'sft': dataclasses.asdict(recipe.sft)})}",
            root / f"reward-{fingerprint({**data, 'tokenizer': tok, 'reward': entry.reward, 'reward_model': dataclasses.asdict(recipe.reward_model)})}")


def test_stage_keys_follow_the_thread_count_and_keep_the_default(tmp_path):
    root = tmp_path / "artifacts"
    default = _recipe(tmp_path)
    entry = default.models["llama-tiny"]
    dirs = artifacts.artifact_dirs(default, entry, root)
    assert (dirs.tokenizer, dirs.sft, dirs.reward_model) == _keys_before_threads(default, entry, root)
    cores = os.cpu_count() or 1
    same = _recipe(tmp_path, run=f"threads_per_cell = {cores}")  # the default's thread count, spelt out
    assert artifacts.artifact_dirs(same, same.models["llama-tiny"], root) == dirs
    other = _recipe(tmp_path, run=f"threads_per_cell = {cores + 1}")
    moved = artifacts.artifact_dirs(other, other.models["llama-tiny"], root)
    assert moved.tokenizer == dirs.tokenizer  # no torch arithmetic in the tokenizer
    assert moved.sft != dirs.sft and moved.reward_model != dirs.reward_model
    assert artifacts.stage_threads(other) == cores + 1 and artifacts.stage_threads(default) == cores


HOSTILE = "<script>alert(1)</script> a | b *star* **bold** `tick` [link](http://x) 1. & # ````"


def test_the_description_is_escaped_in_markdown_and_html(tmp_path):
    from test_report import make_run

    from rlhfkit.report import write_reports

    out = make_run(tmp_path)
    recipe = out / "recipe.toml"
    text = recipe.read_text()
    assert 'description = "A fake run for report tests."' in text
    recipe.write_text(text.replace('"A fake run for report tests."', f'"{HOSTILE}"', 1))
    write_reports(out, only=["markdown", "html"])
    markdown = (out / "report.md").read_text()
    body, _, appendix = markdown.partition("`````toml\n")  # the recipe's copy: in a fence longer than its ````
    assert HOSTILE in appendix.partition("\n`````\n")[0]
    markdown = body + appendix.partition("\n`````\n")[2]
    assert "<script>" not in markdown and "**bold**" not in markdown and "[link](" not in markdown
    assert (r"\<script\>alert\(1\)\</script\> a \| b \*star\* \*\*bold\*\* \`tick\` \[link\]\(http://x\) 1\. \& \# \`\`\`\`"
            in markdown)
    page = (out / "report.html").read_text()
    assert "<script" not in page and "<strong>bold" not in page and "<code>tick" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; a | b *star* **bold** `tick` [link](http://x) 1. &amp; # ````" in page


def test_markdown_literal_renders_as_written():
    markdown_it = __import__("pytest").importorskip("markdown_it")
    from rlhfkit.report.document import md_literal

    text = "# not a heading\n- not a list\n1. nor this\n<b>x</b> a|b *c* _d_ \\e"
    rendered = markdown_it.MarkdownIt("commonmark").render(md_literal(text))
    assert rendered == "<p>" + "\n".join(["# not a heading", "- not a list", "1. nor this",
                                          "&lt;b&gt;x&lt;/b&gt; a|b *c* _d_ \\e"]) + "</p>\n"
