import sys

from common.cloudformation import main

sys.exit(main())
