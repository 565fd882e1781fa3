import sys

from models.convert import main

sys.exit(main())
