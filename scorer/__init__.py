"""The scorer: a Faust app that scores transactions with the ensemble and stores them."""
