"""fleet.plugins: capacity backends. base (the Backend seam), registry (entry points `fleet.backends`), and the
built-in local, docker, kubernetes and e2b backends, each importing its SDK only inside its own module.
"""
