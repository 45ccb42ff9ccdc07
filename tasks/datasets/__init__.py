"""Training datasets on the analysis grid: labels from any polygon inventory (``inventory``,
`landslide make-dataset`) and the Iburi weak-label dataset the first checkpoint was trained on
(``weak_labels``)."""
