"""soar-agent: a self-improvement agent for language models (SOAR teacher-student meta-RL)."""

__version__ = "0.1.0"
