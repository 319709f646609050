# AUTOMATIC1111 / Forge read this before parsing the command line.
def preload(parser):
    parser.add_argument("--embedding-sanitizer-enforce", action="store_true",
                        help="Embedding Sanitizer: sanitize every generation; no setting or API request can turn it off")
