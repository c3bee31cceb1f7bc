"""ecdit: the command-line tool, configuration, parameter initialisation, shared checks and the captioned-shapes data set around the two halves (reference/ and accelerated/)."""
