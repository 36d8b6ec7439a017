"""`evsys ui`: a read-only local web app over the run history (docs/ui.md).

server.py answers HTTP requests and gathers each page's data from the index in one read;
groups.py reads what the pages show of replicate groups; pages.py turns that data into HTML
(every value escaped) with inline SVG charts; static/ holds the CSS and the small script that
polls running runs and opens a group's rows. Nothing is fetched from the network: every asset
ships in this package.
"""
