"""Pure view functions, one module per page: API answers in, figures and table rows out."""
