"""rlhfkit's built-in plugins, installed as ``rlhfkit_plugins``.

They register through the same hooks and the same plugin manager as any third-party package.
"""
