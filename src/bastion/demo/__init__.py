"""The e-commerce shop that ``bastion demo`` runs through the whole chain.

A browser page served by the BFF, and four services written with :mod:`bastion.guard`:

- :mod:`~bastion.demo.catalog`: products, public to read; an admin edits them.
- :mod:`~bastion.demo.orders`: a customer's orders (object-level: her own only; an admin sees
  all); placing one reserves stock and charges a payment with the orders service's own token.
- :mod:`~bastion.demo.inventory`: stock levels (partners read them with opaque tokens; the
  inventory-sync job sets them) and reservations (the orders service only).
- :mod:`~bastion.demo.payments`: charges (``payments:write``, which no customer token carries).

Every service validates the bearer token itself (zero trust) and names itself and the rule that
decided in each answer, which the shop page shows beside every action. Nothing here knows how
it is wired: the command line builds the validators and hands them in.
"""
