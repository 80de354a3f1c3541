from srsmc_jax.app.cli import main

raise SystemExit(main())
