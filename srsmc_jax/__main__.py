from srsmc_jax.cli import main

raise SystemExit(main())
