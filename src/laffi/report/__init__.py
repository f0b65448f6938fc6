"""What a run or an experiment shows a reader: results tables, the HTML page, the figures."""
