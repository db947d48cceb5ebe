"""Model selection: greedy ensemble selection, hyper-parameter search, k-fold indices."""
from fusionjax.select._greedy import greedy_picks, greedy_selection
from fusionjax.select._kfold import kfold_indices
from fusionjax.select._search import (choice, grid_search, log_uniform, random_search,
                                      temperature_scale, uniform)
