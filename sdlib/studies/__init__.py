"""Studies: measurements and experiments that return typed records (``to_dict``/``from_dict``), cached by what
produced them. Figures draw these records; the command line prints them."""
