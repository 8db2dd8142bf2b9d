"""Three views of one Plan: human (terminal, Terraform-like), JSON (stable, versioned) and Markdown (PR comment).

Renderers are pure functions Plan -> str; they never see secrets because the Plan never holds any. Called by
`fleet plan` / `fleet apply` in fleet.cli.
"""

from fleet.reconciler.rendering.human import render_human, render_summary
from fleet.reconciler.rendering.json_view import render_json
from fleet.reconciler.rendering.markdown import GITHUB_COMMENT_LIMIT, render_markdown

__all__ = ["render_human", "render_summary", "render_json", "render_markdown", "GITHUB_COMMENT_LIMIT"]
