import sys

from migrate.zygote.front import main

sys.exit(main())
