"""Recurring sentences of real support email that say nothing about the contact reason.

The same sentence hashes to the same id in every ticket, as in the real data, so a model
can learn to look past them (or a mean-pooling baseline is pulled towards them).
"""

GREETINGS = (
    "Hi,",
    "Hello,",
    "Hi there,",
    "Hello team,",
    "Dear customer service,",
    "Dear Sir or Madam,",
    "Good morning,",
    "Good afternoon,",
    "Hey,",
    "To whom it may concern,",
    "Hi support team,",
    "Hello, I hope you are well.",
)
THANKS = (
    "Thanks in advance.",
    "Thank you for your help!",
    "Thanks!",
    "Thank you.",
    "Many thanks.",
    "I appreciate your help.",
    "Thanks for your time.",
    "Looking forward to hearing from you.",
    "Please get back to me as soon as possible.",
    "Let me know if you need anything else from me.",
)
SIGN_OFFS = (
    "Best regards,",
    "Kind regards,",
    "Regards,",
    "Best,",
    "Cheers,",
    "Sincerely,",
    "Warm regards,",
    "Thanks and regards,",
    "All the best,",
    "Yours faithfully,",
)
DEVICES = (
    "Sent from my iPhone",
    "Sent from my Android phone",
    "Sent from my iPad",
    "Sent from Mail for Windows",
    "Get Outlook for iOS",
    "Sent from my Samsung Galaxy smartphone.",
)
FOOTERS = (
    "This email and any attachments are confidential and intended solely for the addressee.",
    "Please consider the environment before printing this email.",
    "If you have received this email in error, please notify the sender immediately.",
    "This message has been scanned for viruses.",
    "Any views expressed in this message are those of the individual sender.",
    "This email was sent from a notification-only address that cannot accept incoming email.",
)
# per-merchant templates: a contact form or help widget adds one of these to most tickets
FORM_TEMPLATES = (
    "This message was sent via the contact form on {brand}.",
    "New message from the {brand} help widget.",
    "Submitted through the {brand} support page.",
    "You received a new inquiry from {brand} website.",
    "Customer message forwarded by {brand} chat.",
)
BRAND_WORDS = (
    "Nova",
    "Urban",
    "Blue",
    "Peak",
    "Bright",
    "Green",
    "Golden",
    "Swift",
    "Cedar",
    "Lumen",
    "Harbor",
    "Atlas",
    "Maple",
    "Coral",
    "Vivid",
    "North",
    "Pixel",
    "Pure",
    "River",
    "Stone",
)
BRAND_SUFFIXES = (
    "Shop",
    "Store",
    "Outfitters",
    "Goods",
    "Bank",
    "Pay",
    "Market",
    "Home",
    "Wear",
    "Labs",
    "Supply",
    "Co",
    "Money",
    "Direct",
    "Living",
)
