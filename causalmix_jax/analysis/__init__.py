"""Analysis of a finished study: figures (`plots`) drawn from artifacts, for the report
and for notebooks."""
