"""Documents: a recording's title, summary, key points and action items."""
