"""What a run or an ablation shows a reader: results tables, the HTML page, the figures."""
