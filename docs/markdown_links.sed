# Doxygen's input filter for the Markdown pages (Doxyfile.in, FILTER_PATTERNS): links to a
# heading of the same page, [text](#github-anchor), become their text, since Doxygen 1.9 does
# not give headings GitHub's anchors.
s/\[([^]]*)\]\(#[^)]*\)/\1/g
