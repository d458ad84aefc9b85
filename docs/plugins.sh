{ cat <<'HDR'
# Built-in plugins

Everything rlhfkit registers itself, by kind, with the plugin module that registers it. This page is the output
of `rlhfkit plugins --markdown --builtin` (a test fails when it drifts: regenerate it with
`bash docs/plugins.sh`). Third-party packages add to these lists through the `rlhfkit` entry-point group
(docs/writing-plugins.md); `rlhfkit plugins` shows what is installed on your machine, with distributions.

HDR
rlhfkit plugins --markdown --builtin; } > docs/plugins.md
